"""Image trunk features against timm's independent GenLIP-style NaFlexVit (timm 1.0.31), fp32, <= 1e-5.

Semantics that match timm exactly (tested): Conv2d patch embedding with bias, no position embedding or CLS,
pre-norm blocks with LayerNorm(eps 1e-6), q/k/v/out with bias, sigmoid output gate per head and channel
(timm: separate `attn.gate` Linear), SwiGLU with biases (timm: packed GluMlp [gate ; value]), LayerScale,
final LayerNorm, interleaved MRoPE in the rotate-half layout with the same slice-clamped H/W slots.
What timm cannot check: the text side (embeddings, in_proj/proj, lm_head), the prefix-LM mask and text
positions (timm's MRoPE is image-only: temporal slots fixed at 0), packing of several samples.
"""

from __future__ import annotations

import pytest
import torch
from genlip_tiny import tiny_model

from genlip_megatron.convert.timm_names import naflexvit_kwargs, to_timm_state_dict

timm = pytest.importorskip("timm")
from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg  # noqa: E402 - after the importorskip


@pytest.mark.parametrize("width,section", [(64, [2, 3, 3]), (256, [8, 12, 12]), (96, [4, 4, 4])])
def test_image_trunk_matches_timm_naflexvit(width, section):
    model = tiny_model(hidden_size=width, intermediate_size=width * 5 // 2, mrope_section=section)
    reference = NaFlexVit(NaFlexVitCfg(**naflexvit_kwargs(model.config)), in_chans=3, num_classes=0).eval()
    reference.load_state_dict(to_timm_state_dict(model.state_dict(), width), strict=True)
    pixels = torch.randn(2, 3, 20, 28)  # a 5 x 7 grid: rows and columns differ
    with torch.no_grad():
        ours = model.get_image_features(pixels)
        theirs = reference.forward_features(pixels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_linear_patch_embedding_layout_matches_timm_naflex_patches():
    model = tiny_model()
    kwargs = naflexvit_kwargs(model.config) | {"embed_proj_type": "linear"}
    reference = NaFlexVit(NaFlexVitCfg(**kwargs), in_chans=3, num_classes=0).eval()
    reference.load_state_dict(to_timm_state_dict(model.state_dict(), 64, embed_proj_type="linear"), strict=True)
    pixels = torch.randn(1, 3, 12, 8)
    with torch.no_grad():
        ours = model.get_image_features(pixels)
        theirs = reference.forward_features(pixels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_unknown_tensor_is_refused():
    sd = dict(tiny_model().state_dict())
    sd["visual.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(KeyError):
        to_timm_state_dict(sd, 64)
