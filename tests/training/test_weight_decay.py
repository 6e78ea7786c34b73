"""Weight decay: which parameters sit in a decaying optimizer group under `optimizer.decay_params`
("all", the official GenLIP recipe and our default; "megatron", megatron-core's rule), and what one
AdamW step with zero gradients does to each (decoupled decay only: p -> p * (1 - lr * wd))."""

from __future__ import annotations

import pytest
from multiproc import run_on_ranks
from recipe_runs import decay_groups, decay_step

WD, LR = 0.5, 0.1
SETTINGS = [f"optimizer.weight_decay={WD}", f"optimizer.lr={LR}", "schedule.warmup_fraction=0.0",
            "model.text_embed_dim=24"]  # text_embed_dim != width: in_proj and proj exist


def is_bias_or_1d(name: str) -> bool:
    return name.endswith("bias") or "norm" in name or "lambda1" in name


def test_official_rule_decays_every_parameter():
    groups = run_on_ranks(1, decay_groups, SETTINGS + ["optimizer.decay_params=all"], timeout=300)[0]
    assert any(is_bias_or_1d(n) for n in groups) and any("word_embeddings" in n for n in groups)
    assert any("output_layer" in n for n in groups)
    assert set(groups.values()) == {WD}


def test_megatron_rule_skips_biases_norms_and_layer_scale():
    groups = run_on_ranks(1, decay_groups, SETTINGS + ["optimizer.decay_params=megatron"], timeout=300)[0]
    no_decay = sorted(n for n, wd in groups.items() if wd == 0.0)
    decay = sorted(n for n, wd in groups.items() if wd == WD)
    assert len(no_decay) + len(decay) == len(groups)
    assert no_decay == sorted(n for n in groups if is_bias_or_1d(n))
    assert "embedding.word_embeddings.weight" in decay and "output_layer.weight" in decay


@pytest.mark.parametrize("rule", ["all", "megatron"])
def test_a_zero_gradient_step_shrinks_exactly_the_decayed_parameters(rule):
    ratios = run_on_ranks(1, decay_step, SETTINGS + [f"optimizer.decay_params={rule}"], timeout=300)[0]
    for name, ratio in ratios.items():
        decayed = rule == "all" or not is_bias_or_1d(name)
        assert ratio == pytest.approx(1 - LR * WD if decayed else 1.0, abs=1e-6), name
