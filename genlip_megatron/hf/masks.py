"""The prefix-LM attention mask of GenLIP for packed sequences (docs/batch.md).

GenLIP: "Let ViT Speak" (arXiv 2605.00809). A query q may see key k iff both belong to the same sample and
either k is an image token (q image or text), or both are text and k <= q. Image never sees text, samples
never see each other. Padding (segment id -1) sees only itself, so no softmax row is empty, and nothing
else sees padding.

Convention: True = MASKED (megatron-core), so `allowed = ~mask`; SDPA wants `allowed`.

Differences from the reference, by design:
- the official mask builder also lets the LAST token of a sequence see every token of its sample; we keep
  the pure prefix-LM mask (that position carries no loss, so training is the same).
"""

from __future__ import annotations

import torch


def prefix_lm_allowed(segment_ids: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """Which keys each query may attend to.

    Args:
        segment_ids: int [B, S], sample index inside the packed sequence, -1 at padding.
        is_image: bool [B, S], True at image-patch positions.
    Returns:
        bool [B, 1, S, S]: True where query (dim 2) may see key (dim 3).
    """
    seq = segment_ids.shape[1]
    valid = segment_ids >= 0  # [B, S]
    same_sample = segment_ids[:, :, None] == segment_ids[:, None, :]
    same_sample = same_sample & valid[:, :, None] & valid[:, None, :]
    key_is_image = is_image[:, None, :]
    both_text = ~is_image[:, :, None] & ~is_image[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same_sample & (key_is_image | (both_text & causal))
    padding_self = torch.eye(seq, dtype=torch.bool, device=segment_ids.device) & ~valid[:, :, None]
    return (allowed | padding_self).unsqueeze(1)


def prefix_lm_mask(segment_ids: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, S, S], True = masked (megatron-core convention). See `prefix_lm_allowed`."""
    return ~prefix_lm_allowed(segment_ids, is_image)
