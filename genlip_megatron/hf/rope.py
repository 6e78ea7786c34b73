"""Interleaved multimodal rotary embedding (MRoPE) of GenLIP, "rotate-half" layout.

GenLIP: "Let ViT Speak" (arXiv 2605.00809). Each of the head_dim/2 rotary frequencies reads its position
from one of three axes (T, H, W), interleaved as in Qwen3-VL: frequency index i uses
  H if i % 3 == 1 and i < 3 * section_h,
  W if i % 3 == 2 and i < 3 * section_w,
  T otherwise.
Image patches sit at (t=0, h=row, w=col), so for images alone this is a 2-D RoPE; text tokens hold the same
value on all three axes, so for text alone it is a plain 1-D RoPE.

Differences from the reference, by design:
- frequencies are always computed in float32 (cos/sin cast to the activation dtype only when applied).
"""

from __future__ import annotations

import torch


def mrope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/head_dim), i < head_dim/2. Returns float32 [head_dim // 2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def mrope_axis_of_frequency(head_dim: int, mrope_section, device=None) -> torch.Tensor:
    """Axis (0 = T, 1 = H, 2 = W) each rotary frequency takes its position from. Returns int64 [head_dim // 2]."""
    _, section_h, section_w = mrope_section
    index = torch.arange(head_dim // 2, device=device)
    axis = torch.zeros_like(index)
    axis[(index % 3 == 1) & (index < 3 * section_h)] = 1
    axis[(index % 3 == 2) & (index < 3 * section_w)] = 2
    return axis


def interleaved_mrope_freqs(
    position_ids: torch.Tensor, head_dim: int, theta: float, mrope_section
) -> torch.Tensor:
    """Rotary angles for every position.

    Args:
        position_ids: int [3, B, S], the (t, h, w) position of each token.
    Returns:
        float32 [B, S, head_dim]: angles in the rotate-half layout cat(f, f), f [B, S, head_dim // 2].
    """
    inv_freq = mrope_inv_freq(head_dim, theta, device=position_ids.device)  # [D/2]
    axis = mrope_axis_of_frequency(head_dim, mrope_section, device=position_ids.device)  # [D/2]
    # positions[b, s, i] = position_ids[axis[i], b, s]
    positions = position_ids.float().permute(1, 2, 0)[..., axis]  # [B, S, D/2]
    freqs = positions * inv_freq
    return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension (halves, not pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys.

    Args:
        x: [B, heads, S, head_dim].
        freqs: [B, S, head_dim] from `interleaved_mrope_freqs`.
    Returns:
        [B, heads, S, head_dim], dtype of x.
    """
    freqs = freqs.unsqueeze(1)  # [B, 1, S, D]
    cos, sin = freqs.cos(), freqs.sin()
    out = x.float() * cos + rotate_half(x.float()) * sin
    return out.to(x.dtype)
