"""The plain PyTorch reference loop trains like `genlip train` would: the trainer's learning-rate at
every update, the same samples in the same global order with the same text layout, the HF loss."""

import numpy as np
import pytest
import torch

from genlip_megatron.config.load import load_config
from genlip_megatron.eval.reference_training import ReferenceTrainer, reference_batches, scheduled_lr


@pytest.mark.parametrize("style,warmup", [("cosine", 0.1), ("linear", 0.25), ("constant", 0.0), ("cosine", 0.0)])
def test_scheduled_lr_is_megatrons_lr_at_every_update(style, warmup):
    from genlip_megatron.training.model_setup import build_scheduler

    cfg = load_config("tiny_cpu", ["schedule.train_iters=40", f"schedule.warmup_fraction={warmup}",
                                   f"schedule.decay_style={style}", "optimizer.lr=3e-3", "optimizer.min_lr=1e-5"])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg, optimizer)
    for step in range(45):  # the trainer updates with the current lr, then steps the scheduler
        assert scheduled_lr(cfg, step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        scheduler.step(increment=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A 70-sample dataset of 8 x 8 images built by the real shard builder."""
    import json

    from PIL import Image

    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.merge import merge
    from data_tools.unit import BuildSettings
    from genlip_megatron.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("reference_shards")
    rng = np.random.default_rng(0)
    words = ["bag", "boot", "shirt", "coat", "dress"]
    with open(root / "captions.jsonl", "w") as f:
        for i in range(70):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
            caption = "a photo of a " + " and a ".join(words[: 1 + i % 4]) + "."
            f.write(json.dumps({"image": f"{i}.png", "caption": caption}) + "\n")
    train_bpe([json.loads(line)["caption"] for line in open(root / "captions.jsonl")] + ["look"] * 70, 300,
              str(root / "tokenizer.json"), min_frequency=1)
    run_build([str(root / "captions.jsonl")], str(root / "shards"), str(root / "tokenizer.json"),
              BuildSettings(caption=CaptionSettings(fields=("caption",))), "look", progress=False)
    merge(str(root / "shards"))
    return str(root / "shards" / "manifest.json")


def _cfg(manifest):
    return load_config("tiny_cpu", [f"data.manifest={manifest}", "data.image_size=8", "data.prompt=look",
                                    "model.vocab_size=300", "data.max_caption_tokens=6"])


def test_reference_batches_hold_the_trainers_samples_in_global_order(shards):
    from genlip_megatron.data.manifest import load_tokenizer, open_dataset
    from genlip_megatron.data.sampler import GlobalOrder

    cfg = _cfg(shards)
    dataset = open_dataset(shards)
    tokenizer = load_tokenizer(dataset.manifest)
    prompt, end = tokenizer.encode("look"), tokenizer.encode("<|endoftext|>")
    batches = list(reference_batches(cfg, 40, batch_size=8, start=16))
    assert len(batches) == 5
    order = GlobalOrder(dataset.shard_sizes, cfg.data.seed).span(16, 56)
    for b, batch in enumerate(batches):
        assert batch["pixel_values"].shape == (8, 3, 8, 8)
        for row in range(8):
            caption = list(dataset[int(order[8 * b + row])].tokens)
            cut = caption[:6]  # max_caption_tokens: a cut caption gets no end text (as in training)
            want = prompt + cut + (end if len(caption) <= 6 else [])
            n = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :n].tolist() == want
            assert batch["labels"][row, :n].tolist() == [-100] * len(prompt) + want[len(prompt):]
            assert (batch["labels"][row, n:] == -100).all()


def test_reference_step_minimises_the_hf_loss_with_the_scheduled_lr(shards):
    cfg = _cfg(shards)
    cfg.schedule.train_iters, cfg.schedule.warmup_fraction = 10, 0.2
    trainer = ReferenceTrainer(cfg, seed=1)
    batch = next(reference_batches(cfg, 8, batch_size=8))
    with torch.no_grad():
        before = float(trainer.model(**batch).loss)
    first = trainer.step(batch)  # update 0 has lr 0 (warm-up from 0): nothing moves
    assert first == pytest.approx(before, rel=1e-6)
    for _ in range(5):
        trainer.step(batch)
    assert trainer.optimizer.param_groups[0]["lr"] == scheduled_lr(cfg, 5)
    with torch.no_grad():
        assert float(trainer.model(**batch).loss) < before
