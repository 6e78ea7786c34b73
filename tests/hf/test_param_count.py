"""Parameter counts of the official L/16, So/16 and g/16 configs (docs/recipe.md) against a closed formula."""

from __future__ import annotations

import pytest
import torch

from genlip_megatron.hf.configuration_genlip import GenLIPConfig
from genlip_megatron.hf.modeling_genlip import GenLIPModel

VOCAB = 151936
# variant: (width, depth, SwiGLU hidden, text_embed_dim, mrope_section)
PRESETS = {
    "L/16": (1152, 24, 2752, 1024, [8, 12, 12]),
    "So/16": (1152, 27, 3072, 1152, [12, 12, 12]),
    "g/16": (1536, 40, 4096, 1024, [16, 16, 16]),
}


def closed_form(width: int, depth: int, hidden: int, text_dim: int, patch: int = 16, vocab: int = VOCAB) -> int:
    patch_embed = 3 * patch * patch * width + width
    per_layer = (
        2 * 2 * width  # layer_norm1, layer_norm2 (weight + bias)
        + width * 2 * width + 2 * width  # q_proj: [q ; gate]
        + 3 * (width * width + width)  # k_proj, v_proj, out_proj
        + 2 * (width * hidden + hidden)  # fc1, gate_fc
        + hidden * width + width  # fc2
        + 2 * width  # layer_scale1, layer_scale2
    )
    ln_post = 2 * width
    text = vocab * text_dim * 2  # embeddings + untied lm_head (no bias)
    if text_dim != width:
        text += (text_dim * width + width) + (width * text_dim + text_dim)  # in_proj, proj (with bias)
    return patch_embed + depth * per_layer + ln_post + text


@pytest.mark.parametrize("variant", list(PRESETS))
def test_parameter_count_matches_closed_form(variant):
    width, depth, hidden, text_dim, section = PRESETS[variant]
    config = GenLIPConfig(hidden_size=width, num_hidden_layers=depth, intermediate_size=hidden,
                          num_attention_heads=16, text_embed_dim=text_dim, vocab_size=VOCAB, mrope_section=section)
    with torch.device("meta"):
        model = GenLIPModel(config)
    assert sum(p.numel() for p in model.parameters()) == closed_form(width, depth, hidden, text_dim)


# Totals of the official configs (embedding and lm_head of the 151,936-token Qwen3 vocabulary included).
OFFICIAL_TOTALS = {"L/16": 702_392_832, "So/16": 817_301_376, "g/16": 1_543_396_352}


@pytest.mark.parametrize("variant", list(PRESETS))
def test_official_totals(variant):
    """The official L/16 is width 1152, not the 1024 an earlier note read from the paper's "300M": its
    blocks alone hold 24 x (5 x 1152^2 + 3 x 1152 x 2752 + biases) = 388M parameters."""
    width, depth, hidden, text_dim, _ = PRESETS[variant]
    assert closed_form(width, depth, hidden, text_dim) == OFFICIAL_TOTALS[variant]
