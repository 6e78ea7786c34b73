"""A plain PyTorch loop training the Hugging Face GenLIP: the baseline our trainer is measured against.

The model is the exported class (genlip_megatron/hf, what `genlip convert to-hf` writes), trained the
way a user of that class would: one sample per row ([image][prompt][caption][end], text right-padded,
HF `labels` with -100 on the prompt and padding), torch AdamW with the run's betas / eps / weight
decay, gradient clipping, and the trainer's learning-rate schedule (linear warm-up from 0, cosine to
min_lr over schedule.train_iters). It reads the same shards in the same global sample order as
`genlip train` (the Feistel order of data/sampler.py), with the same caps (TextLayout) and decoder
(the reference decoder, same pixels as DALI's), decoded up front: the timed loop pays no loader.

bench/train_step.py times it against `genlip train`; `genlip demo` trains it briefly on the demo's
shards and reports it beside our run (eval/demo_report.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

BATCH_SIZE = 64  # samples per step, as the official code's CPU run


def reference_batches(cfg, count: int, batch_size: int = BATCH_SIZE, start: int = 0) -> Iterator[dict]:
    """Batches of `batch_size` samples: positions [start, start + count) of the run's global order.

    Yields HF `forward` kwargs: pixel_values [b, 3, H, W], input_ids / attention_mask / labels [b, T].
    """
    from genlip_megatron.data.image_geometry import ImageGeometry
    from genlip_megatron.data.manifest import load_tokenizer, open_dataset
    from genlip_megatron.data.reference_decode import reference_process
    from genlip_megatron.data.sampler import GlobalOrder
    from genlip_megatron.training.batches import checked_text_layout

    d, m = cfg.data, cfg.model
    if d.native_resolution or d.random_resized_crop:
        raise ValueError("the plain reference loop takes square images without random crops "
                         "(data.native_resolution and data.random_resized_crop off)")
    dataset = open_dataset(d.manifest)
    geometry = ImageGeometry(patch_size=m.patch_size, image_size=d.image_size)
    text = checked_text_layout(cfg, load_tokenizer(dataset.manifest), geometry.max_image_tokens())
    image_tokens = (d.image_size // m.patch_size) ** 2
    order = GlobalOrder(dataset.shard_sizes, d.seed)
    for first in range(start, start + count - batch_size + 1, batch_size):
        samples = [dataset[int(i)] for i in order.span(first, first + batch_size)]
        pixels = np.stack([reference_process(s.image, (0.0, 0.0, 1.0, 1.0), (d.image_size, d.image_size))
                           for s in samples])
        texts = [text.text_ids(np.asarray(s.tokens, dtype=np.int64), image_tokens)[0] for s in samples]
        longest = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), longest, dtype=torch.long)
        mask = torch.zeros(len(texts), longest, dtype=torch.long)
        for row, t in enumerate(texts):
            ids[row, : len(t)] = torch.from_numpy(t)
            mask[row, : len(t)] = 1
        labels = torch.where(mask.bool(), ids, -100)
        labels[:, : len(text.prompt_ids)] = -100  # the prompt carries no loss
        yield {"pixel_values": torch.from_numpy(pixels), "input_ids": ids, "attention_mask": mask,
               "labels": labels}


def scheduled_lr(cfg, step: int) -> float:
    """The learning rate of optimizer update `step` (0-based) in `genlip train`: megatron-core's
    OptimizerParamScheduler (training/model_setup.py) - linear warm-up from 0 over
    round(warmup_fraction x train_iters) updates, then cosine (or linear) to min_lr at train_iters."""
    s, o = cfg.schedule, cfg.optimizer
    warmup = round(s.warmup_fraction * s.train_iters)
    if warmup > 0 and step <= warmup:
        return o.lr * step / warmup
    if s.decay_style == "constant":
        return o.lr
    if step > s.train_iters:
        return o.min_lr
    ratio = (step - warmup) / (s.train_iters - warmup)
    coeff = 1.0 - ratio if s.decay_style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return o.min_lr + coeff * (o.lr - o.min_lr)


@dataclass
class ReferenceTrainer:
    """One HF GenLIP, AdamW and the run's schedule; `step(batch)` is one plain training step."""

    cfg: object
    seed: int = 0
    steps: int = 0
    losses: list = field(default_factory=list)

    def __post_init__(self):
        from genlip_megatron.objectives.genlip.evaluation import random_model

        o = self.cfg.optimizer
        self.model = random_model(self.cfg.model, seed=self.seed).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=scheduled_lr(self.cfg, 0),
                                           betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps,
                                           weight_decay=o.weight_decay)

    def step(self, batch: dict) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(self.cfg, self.steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.clip_grad)
        self.optimizer.step()
        self.steps += 1
        self.losses.append(float(loss.detach()))
        return self.losses[-1]


def train_reference(cfg, steps: int, batch_size: int = BATCH_SIZE, seed: int = 0, log_every: int = 0
                    ) -> tuple[ReferenceTrainer, dict]:
    """`steps` plain steps from the start of the run's sample order; returns the trainer and
    {"samples", "seconds" (training only, batches prepared before), "samples_per_s"}."""
    trainer = ReferenceTrainer(cfg, seed)
    batches = list(reference_batches(cfg, steps * batch_size, batch_size))
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        loss = trainer.step(batch)
        if log_every and (i + 1) % log_every == 0:
            print(f"[reference] step {i + 1}/{steps} loss {loss:.4f}", flush=True)
    seconds = time.perf_counter() - start
    samples = steps * batch_size
    trainer.model.eval()
    return trainer, {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}
