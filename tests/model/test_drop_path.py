"""Stochastic depth: the per-layer rates of the two schedules (official: constant) at PP2, and what
one DropPath does to a batch (drops whole rows at the rate, rescales the kept ones)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from multiproc import run_on_ranks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from recipe_runs import drop_path_rates  # noqa: E402

from genlip_megatron.model.layer import drop_path  # noqa: E402

FOUR_LAYERS = ["model.num_layers=4", "model.drop_path_rate=0.3"]


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.3, 0.3, 0.3, 0.3]),  # the official GenLIP rule and our default
    ("linear", [0.0, 0.1, 0.2, 0.3]),  # the stochastic-depth ramp, by name
])
def test_every_layer_gets_its_scheduled_rate_on_every_pipeline_stage(schedule, expected):
    overrides = FOUR_LAYERS + [f"model.drop_path_schedule={schedule}", "parallel.pipeline_model_parallel_size=2"]
    stages = run_on_ranks(2, drop_path_rates, overrides, pp=2, timeout=300)
    assert [n for n, _ in stages[0]] == [1, 2] and [n for n, _ in stages[1]] == [3, 4]
    assert [rate for stage in stages for _, rate in stage] == pytest.approx(expected)


def test_default_schedule_is_constant():
    from genlip_megatron.config.load import load_config

    assert load_config("genlip_l16").model.drop_path_schedule == "constant"
    assert load_config("genlip_g16").model.drop_path_rate == 0.2


def test_drop_path_drops_whole_rows_at_the_rate_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(3, 4000, 2)  # [S, B, H]: B = packed sequences
    y = drop_path(x, 0.25, training=True)
    kept = y[0, :, 0] != 0
    assert torch.all((y == 0) == ~kept[None, :, None])  # a row is dropped in every position and channel
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.03
    assert torch.allclose(y[:, kept], torch.full_like(y[:, kept], 1 / 0.75))
    assert torch.equal(drop_path(x, 0.25, training=False), x)
