"""The rotary-embedding kernel megatron-core applies to queries and keys: one fused pass.

megatron-core rotates q and k of every layer with `apply_rotary_pos_emb`. Its unfused path costs
about six memory passes per tensor (cos, sin, two broadcast products over the heads, rotate-half
through a concatenation, and a final concatenation with the empty non-rotary part), in the [S, B, h, d]
layout where the heads sit between sequence and channel - 10% of a tiny GenLIP step on CPU. Its
fused path is the slot `rope_utils.fused_apply_rotary_pos_emb`, which Transformer Engine fills when
installed; TE's kernel does not take GenLIP's per-sample MRoPE angles ([S, B, 1, D] with B > 1), so
GPU runs fell back to the unfused path too.

`install()` puts `fused_rope` in that slot, for CPU and GPU alike; the model's TransformerConfig then
sets `apply_rope_fusion=True` (model/transformer_config.py). `fused_rope` is the same rotate-half
formula compiled by megatron-core's `jit_fuser` (torch.compile) into one kernel forward and one
backward; the parity tests against the plain-torch model (hf/rope.py) cover it.
"""

from __future__ import annotations

import torch
from megatron.core.jit import jit_fuser
from megatron.core.models.common.embeddings import rope_utils


@jit_fuser
def _rotate(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(freqs).to(t.dtype), torch.sin(freqs).to(t.dtype)
    first, second = t.chunk(2, dim=-1)
    return t * cos + torch.cat((-second, first), dim=-1) * sin


def fused_rope(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False, **unused) -> torch.Tensor:
    """Rotate t [S, B, h, d] by angles freqs [S, B or 1, 1, d] (rotate-half layout, d = head dim)."""
    if interleaved:
        raise ValueError("GenLIP's rotary embedding uses the rotate-half layout, not interleaved pairs")
    if freqs.shape[-1] != t.shape[-1]:
        raise ValueError(f"rotary angles cover {freqs.shape[-1]} of {t.shape[-1]} channels; GenLIP rotates all")
    return _rotate(t, freqs)


def install() -> None:
    """Make `fused_rope` megatron-core's fused RoPE kernel (idempotent; before building configs)."""
    rope_utils.fused_apply_rotary_pos_emb = fused_rope
