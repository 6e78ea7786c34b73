"""The official GenLIP initialisation (model/init.py): per matrix, the sample statistics of the
official rule (xavier-uniform with the fans of the official separate q_proj [2W, W] and k/v/out
[W, W]; N(0, 0.02) for every other matrix; zero biases, unit LayerNorms, LayerScale 0.1), read in
the official layout; and one seed gives identical full weights at TP1 and at TP2 x PP2."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from multiproc import run_on_ranks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from recipe_runs import initial_weights  # noqa: E402

from genlip_megatron.convert.mcore_names import mcore_to_hf  # noqa: E402

W, HEADS, LAYERS, FFN, TEXT, VOCAB, PATCH = 128, 4, 4, 256, 96, 500, 4
MODEL = [f"model.hidden_size={W}", f"model.num_attention_heads={HEADS}", f"model.num_layers={LAYERS}",
         f"model.ffn_hidden_size={FFN}", f"model.text_embed_dim={TEXT}", f"model.vocab_size={VOCAB}",
         "model.mrope_section=[6,5,5]", "model.layer_scale_init=0.1", "model.init_method_std=0.02"]


def hf_weights(tp: int, pp: int, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Initialise at TP x PP on 4 ranks, gather, return the official-layout (HF) state dict."""
    overrides = MODEL + [f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
                         f"train.seed={seed}"]
    full = {}
    for part in run_on_ranks(4, initial_weights, overrides, tp=tp, pp=pp, timeout=300):
        full.update(part or {})
    return mcore_to_hf(full, num_layers=LAYERS, num_heads=HEADS, vocab_size=VOCAB, patch_size=PATCH)


@pytest.fixture(scope="module")
def tp1():
    return hf_weights(1, 1)


def xavier_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out)) / math.sqrt(3.0)  # std of U(-b, b) is b / sqrt(3)


def test_attention_projections_are_xavier_uniform_with_the_official_fans(tp1):
    for i in range(LAYERS):
        attn = f"visual.layers.{i}.self_attn."
        q_proj = tp1[attn + "q_proj.weight"]
        assert q_proj.shape == (2 * W, W)
        bound = math.sqrt(6.0 / (W + 2 * W))
        for rows in (q_proj, q_proj[:W], q_proj[W:]):  # the gate rows share q_proj's fans
            assert rows.std().item() == pytest.approx(xavier_std(W, 2 * W), rel=0.03)
            assert rows.abs().max().item() <= bound and rows.abs().max().item() > 0.99 * bound
        for name in ("k_proj", "v_proj", "out_proj"):
            weight = tp1[f"{attn}{name}.weight"]
            assert weight.std().item() == pytest.approx(xavier_std(W, W), rel=0.03), name
            assert weight.abs().max().item() <= math.sqrt(6.0 / (2 * W))


def test_every_other_matrix_is_normal_with_std_0_02(tp1):
    normal = ["vision_embeddings.patch_embedding.weight", "embeddings.weight", "in_proj.weight", "proj.weight",
              "lm_head.weight"]
    normal += [f"visual.layers.{i}.mlp.{n}.weight" for i in range(LAYERS) for n in ("fc1", "gate_fc", "fc2")]
    for name in normal:
        assert tp1[name].std().item() == pytest.approx(0.02, rel=0.03), name
        assert abs(tp1[name].mean().item()) < 0.002, name


def test_biases_are_zero_layer_norms_unit_and_layer_scale_0_1(tp1):
    for name, tensor in tp1.items():
        if name.endswith("bias"):
            assert not tensor.any(), name
        elif "norm" in name or name.startswith("ln_post"):
            assert torch.all(tensor == 1.0), name
        elif name.endswith("lambda1"):
            assert torch.all(tensor == 0.1), name


def test_one_seed_gives_the_same_full_weights_at_tp1_and_tp2_pp2(tp1):
    tp2pp2 = hf_weights(2, 2)
    assert sorted(tp1) == sorted(tp2pp2)
    different = [k for k in tp1 if not torch.equal(tp1[k], tp2pp2[k])]
    assert not different, different
    other_seed = hf_weights(1, 1, seed=99)
    assert not torch.equal(other_seed["embeddings.weight"], tp1["embeddings.weight"])
    # every matrix draws from its own stream: no two layers repeat one another
    assert not torch.equal(tp1["visual.layers.0.mlp.fc1.weight"], tp1["visual.layers.1.mlp.fc1.weight"])
