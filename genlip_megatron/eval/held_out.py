"""Offline held-out caption loss of a shard dataset: the number a training run logs as
`eval/caption_loss` (training/held_out.py), recomputed from a checkpoint in one process.

The sequences come from the same definition training uses (data/run_loader.py, with the run's config:
packing, geometry, prompt, seed, global batch, train.eval_iters), here for a single data-parallel
rank, which sees every sequence of each global batch; the plain-torch model scores them. The loss is
sum / count of next-token CE over every loss position, so how sequences split into micro-batches or
ranks does not change it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.eval.sequences import model_inputs


@torch.no_grad()
def packed_loss(model, batch) -> tuple[float, int]:
    """(CE sum, loss positions) of one PackedBatch under the plain-torch GenLIP, in float64."""
    logits = model.forward_packed(**model_inputs(batch))["logits"].double()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=-100,
                         reduction="none")
    mask = batch.loss_mask.reshape(-1).double()
    return float((ce * mask).sum()), int(mask.sum())


def held_out_loss(model, cfg, manifest: str, iters: int | None = None) -> dict:
    """{"held_out_loss", "held_out_tokens", "held_out_samples", "seconds"} over the first `iters`
    (default train.eval_iters) global batches of dataset `manifest`, packed as run `cfg` packs them."""
    from genlip_megatron.data.run_loader import shard_loader

    start = time.perf_counter()
    iters = cfg.train.eval_iters if iters is None else iters
    loader = shard_loader(cfg, manifest, 0, 1, augment=False)
    per_step = StepSplit(cfg.train.global_batch_size, cfg.train.micro_batch_size, 1).micro_batches
    stream = iter(loader)
    total, tokens, samples = 0.0, 0, 0
    model.eval()
    try:
        for _ in range(iters * per_step):
            batch = next(stream)
            loss_sum, count = packed_loss(model, batch)
            total, tokens, samples = total + loss_sum, tokens + count, samples + batch.num_samples
    finally:
        stream.close()
    return {"held_out_loss": total / tokens if tokens else float("nan"), "held_out_tokens": tokens,
            "held_out_samples": samples, "seconds": time.perf_counter() - start}
