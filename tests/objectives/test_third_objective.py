"""A third objective is one spec plus its registration: this test defines a toy captioner (every caption
token predicted from the mean of its sample's image patches, CapPa-like parallel prediction), registers
it, and trains it two steps through the real trainer (run_training: DDP, distributed optimizer,
megatron's schedule, checkpoint, metrics), with nothing in the trainer naming it."""

from __future__ import annotations

import json
import math
import sys
from functools import partial
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))  # the trainer tests' tiny run

from multiproc import run_on_ranks
from tiny_runs import TINY

from genlip_megatron.objectives import registry
from genlip_megatron.objectives.spec import NotProvided, ObjectiveSpec


def _toy_model_class():
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.enums import ModelType
    from megatron.core.transformer.module import MegatronModule

    class ToyCaptioner(MegatronModule):
        def __init__(self, config, patch_dim: int, vocab: int):
            super().__init__(config=config)
            self.model_type = ModelType.encoder_or_decoder
            self.share_embeddings_and_output_weights = False
            self.embed = torch.nn.Linear(patch_dim, config.hidden_size)
            self.head = torch.nn.Linear(config.hidden_size, vocab)

        def set_input_tensor(self, input_tensor) -> None:  # one pipeline stage: nothing to receive
            pass

        def forward(self, batch):
            """Per-token CE [B, S]: position p predicts labels[p] from its sample's pooled image."""
            n_img, n_all = batch.sample_lengths()[0], batch.spans[:, 2] - batch.spans[:, 0]
            k = torch.arange(batch.num_samples)
            image = self.embed(batch.image_patches)  # [N, H], samples in order
            pooled = torch.zeros(len(k), image.shape[1]).index_add(0, k.repeat_interleave(n_img), image)
            pooled = pooled / n_img.clamp(min=1)[:, None]
            sample_of = torch.zeros(batch.tokens.numel(), dtype=torch.long)  # padding: sample 0, no loss
            positions = torch.cat([torch.arange(s, e) for s, e in batch.spans[:, [0, 2]].tolist()])
            sample_of[positions] = k.repeat_interleave(n_all)
            logits = self.head(pooled)[sample_of]
            ce = F.cross_entropy(logits, batch.labels.clamp(min=0).reshape(-1), reduction="none")
            return ce.view_as(batch.loss_mask)

    return ToyCaptioner


class ToySpec(ObjectiveSpec):
    description = "toy: caption tokens from the mean image patch (test only)"

    def transformer_config(self, cfg):
        from genlip_megatron.model.transformer_config import genlip_transformer_config

        return genlip_transformer_config(cfg)  # what DDP and the schedule read (sizes, dtype, per-token loss)

    def build_stage(self, cfg, transformer_config, *, pre_process, post_process, vp_stage):
        m = cfg.model
        return _toy_model_class()(transformer_config, m.num_channels * m.patch_size ** 2, m.vocab_size)

    def forward_step(self, item, model):
        from genlip_megatron.objectives.genlip.step import loss_func

        return model(item), partial(loss_func, item.loss_mask)

    def train_flops(self, cfg, item) -> int:
        m = cfg.model
        n_img, _ = item.sample_lengths()
        tokens = int((item.spans[:, 2] - item.spans[:, 0]).sum())
        return 3 * (2 * int(n_img.sum()) * m.num_channels * m.patch_size ** 2 * m.hidden_size
                    + 2 * tokens * m.hidden_size * m.vocab_size)


def train_toy(overrides: list[str], run_dir: str) -> dict:
    """In a pool worker: register the toy objective there, then train through the real trainer."""
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.validate import validate
    from genlip_megatron.training.trainer import run_training

    registry.register("toy", ToySpec(), replace=True)
    try:
        cfg = load_config("tiny_cpu", TINY + overrides + ["model.objective=toy", f"checkpoint.dir={run_dir}"])
        problems = validate(cfg)
        outcome = run_training(cfg)
    finally:
        registry.unregister("toy")
    return {"problems": problems, "losses": outcome.losses, "exit_code": outcome.exit_code}


def test_a_toy_objective_registered_in_the_test_trains_two_steps(tmp_path):
    result = run_on_ranks(2, train_toy, ["schedule.train_iters=2", "checkpoint.save_interval=2"],
                          str(tmp_path))[0]
    assert result["problems"] == [] and result["exit_code"] == 0
    assert sorted(result["losses"]) == [1, 2] and all(math.isfinite(v) for v in result["losses"].values())
    assert result["losses"][2] != result["losses"][1]  # the first step updated the weights
    # the chance level of the 64-token vocabulary: a random head starts near ln(64) = 4.16
    assert abs(result["losses"][1] - math.log(64)) < 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["flops"] > 0 for r in records)
    assert (tmp_path / "latest").read_text().strip() == "iter_0000002"


def test_an_unregistered_objective_is_refused_in_one_line_and_a_missing_piece_is_named():
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.validate import validate

    [line] = [p for p in validate(load_config("tiny_cpu", ["model.objective=toy"])) if "objective" in p]
    assert line.startswith("model.objective: unknown value 'toy'") and "genlip, aimv2" in line
    registry.register("toy", ToySpec())
    try:
        assert "toy" in registry.names() and registry.get("toy").presets == ()
        with pytest.raises(ValueError, match="already registered"):
            registry.register("toy", ToySpec())
        with pytest.raises(NotProvided, match="ToySpec does not provide a memory model"):
            registry.get("toy").plan_memory(None, None, 1, 84)
    finally:
        registry.unregister("toy")
    assert "toy" not in registry.names()
