"""`genlip plan`: parameter counts, layouts for the GenLIP-g/16 recipes on 1,024 H100s, rejections."""

from __future__ import annotations

import pytest

from genlip_megatron.cli import main
from genlip_megatron.config.load import load_config
from genlip_megatron.objectives.genlip.planner import activation_bytes_per_layer
from launch.hardware import GPUS, Assumptions
from launch.layouts import plan
from launch.memory import GIB, Layout, memory_breakdown, total_params


def test_g16_parameter_count_matches_the_hand_count():
    # 40 x (5 H^2 + 3 H F + biases/norms) + patch embed + 2 x (vocab x 1024) + in_proj + proj.
    cfg = load_config("genlip_g16")
    h, f, e, v = 1536, 4096, 1024, 151936
    trunk = 40 * (5 * h * h + 3 * h * f)
    heads = 2 * v * e + 2 * h * e
    assert abs(total_params(cfg) - (trunk + heads)) / (trunk + heads) < 0.002


@pytest.mark.parametrize("preset", ["genlip_g16", "genlip_g16_stage2"])
def test_g16_on_1024_h100_has_layouts_that_fit_80_gb(preset):
    cfg = load_config(preset)
    fits, rejected = plan(cfg, 1024, GPUS["h100"], Assumptions(), text_tokens=84)
    assert fits, rejected[:3]
    best = fits[0]
    assert best.memory_total < 80e9
    assert best.layout.tp * best.layout.pp * best.layout.cp * best.layout.dp == 1024
    assert 0.2 < best.mfu < 0.6  # bounded by the assumed 0.6 matmul efficiency
    # DP 1024 would need a global batch of at least 1,024 sequences: the recipe has 512.
    assert any("global_batch_size" in reason for layout, reason in rejected if layout.dp == 1024)
    steps = [round(est.step_seconds, 4) for est in fits]  # the ranking key
    assert steps == sorted(steps)


def test_recompute_and_sequence_parallel_cut_activation_memory():
    cfg = load_config("genlip_g16")
    plain = memory_breakdown(cfg, Layout(tp=2, dp=512), 1, 84)
    sp = memory_breakdown(cfg, Layout(tp=2, dp=512, sequence_parallel=True), 1, 84)
    full = memory_breakdown(cfg, Layout(tp=2, dp=512, sequence_parallel=True, recompute="full"), 1, 84)
    assert full["activations"] < sp["activations"] / 10 < plain["activations"] / 10
    assert plain["weights"] == sp["weights"] == full["weights"]


def test_distributed_optimizer_shards_optimizer_state_over_dp():
    cfg = load_config("genlip_g16")
    sharded = memory_breakdown(cfg, Layout(tp=2, dp=512), 1, 84)
    cfg.parallel.use_distributed_optimizer = False
    whole = memory_breakdown(cfg, Layout(tp=2, dp=512), 1, 84)
    assert whole["optimizer"] == pytest.approx(sharded["optimizer"] * 512)
    assert whole["optimizer"] / GIB == pytest.approx(total_params(cfg) / 2 * 12 / GIB, rel=0.01)


def test_context_parallel_splits_activations_and_counts_the_gathered_keys_and_values():
    cfg = load_config("genlip_g16_stage2", ["data.seq_length=65536"])
    one = activation_bytes_per_layer(cfg, Layout(tp=2, dp=512, sequence_parallel=True))
    four = activation_bytes_per_layer(cfg, Layout(tp=2, cp=4, dp=128, sequence_parallel=True))
    assert four["block"] == pytest.approx(one["block"] / 4) and "context_kv" not in one
    # K and V (2) of the 3 x 16,384 positions other CP ranks hold, 1536 / TP2 channels, bf16 (2 B)
    assert four["context_kv"] == 2 * 3 * 16384 * 768 * 2


def test_64k_token_packs_on_1024_h100_run_fastest_with_context_parallelism():
    cfg = load_config("genlip_g16_stage2", ["data.seq_length=65536"])
    fits, rejected = plan(cfg, 1024, GPUS["h100"], Assumptions(), text_tokens=84)
    best = fits[0]
    assert best.layout.cp > 1 and "context_parallel" in best.seconds
    assert best.memory_total < GPUS["h100"].memory_bytes * Assumptions().usable_fraction
    assert all(est.step_seconds > best.step_seconds for est in fits if est.layout.cp == 1)


def test_a_model_too_big_for_the_gpus_is_rejected_for_memory():
    cfg = load_config("genlip_g16", ["model.num_layers=400", "model.hidden_size=6144", "model.ffn_hidden_size=16384",
                                     "model.mrope_section=[64,64,64]"])
    fits, rejected = plan(cfg, 8, GPUS["h100"], Assumptions(), text_tokens=84)
    assert not fits
    assert any(reason.startswith("needs ") and "GiB usable" in reason for _, reason in rejected)


def test_plan_command_prints_ranked_layouts_and_rejection_reasons(capsys):
    assert main(["plan", "genlip_g16", "--gpus", "1024", "--gpu", "h100", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "B parameters" in out and "FLOPs per step" in out
    assert "memory, recompute=none" in out and "memory, recompute=full" in out
    assert "fitting layouts:" in out and "rejected layouts:" in out and "MFU" in out
