"""Packed batches of (image, caption) pairs for scoring and generation, built by the data path's own
sample layout (`build_sample_sequence` + `pack_sequences`), so evaluation sequences are exactly what
training saw: [image patches][prompt][caption][end tokens], same positions, same labels.

NOTE: one pair per row, padded to the longest pair, rather than several pairs per row: the reference
model builds a dense S x S mask per row, so short rows cost far less attention than long shared ones,
and the result is the same (pairs never see each other either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genlip_megatron.data.packing import pack_sequences
from genlip_megatron.data.sample_sequence import TextLayout, build_sample_sequence, patchify
from genlip_megatron.data.tokenizer import end_text_ids

MODEL_KEYS = ("tokens", "image_patches", "is_image", "position_ids", "segment_ids")


def text_layout(tokenizer, prompt: str, max_caption_tokens: int | None = None,
                end_text: str | None = None) -> TextLayout:
    """Prompt and end ids as training built them: `end_text` is the run's data.end_text; None falls
    back to the tokenizer's own end-of-turn token (duck-typed: encode(text) -> ids, end_ids)."""
    end = tuple(tokenizer.end_ids) if end_text is None else end_text_ids(tokenizer, end_text)
    return TextLayout(tuple(tokenizer.encode(prompt)) if prompt else (), end, max_caption_tokens)


def image_patches(images: torch.Tensor, patch_size: int) -> list[np.ndarray]:
    """float [N, 3, H, W] -> N arrays [H/P * W/P, 3*P*P] (the data path's patch order)."""
    return [patchify(image, patch_size) for image in images.detach().float().cpu().numpy()]


def pair_batch(patches: Sequence[np.ndarray], grid: tuple[int, int], pairs: Sequence[tuple[int, Sequence[int]]],
               layout: TextLayout, include_end: bool = True) -> tuple[dict, torch.Tensor]:
    """One row per pair (image index, caption ids), padded to the longest row.

    Args:
        patches: per image [grid_h * grid_w, 3*P*P] (see image_patches); all images share `grid`.
        pairs: (index into patches, caption token ids without prompt or end tokens).
        include_end: whether the end-of-turn tokens count as caption tokens in `score_mask`.
    Returns:
        (PackedBatch (docs/batch.md), score_mask float [B, S]: 1 where the position's label is a
        scored caption token; labels of those positions are the caption tokens in order).
    """
    sequences = [build_sample_sequence(grid[0], grid[1], np.asarray(ids, dtype=np.int64), layout)
                 for _, ids in pairs]
    seq_length = max(len(s) for s in sequences)
    batch = pack_sequences([[(s, patches[i])] for s, (i, _) in zip(sequences, pairs)], seq_length)
    score_mask = batch.loss_mask.clone()
    if not include_end:
        for row, seq in enumerate(sequences):
            # the last end_tokens loss positions of a sample predict its end tokens (none if cut)
            last = len(seq) - 1
            score_mask[row, last - seq.end_tokens : last] = 0.0
    return batch, score_mask


def model_inputs(batch: dict) -> dict:
    """The five tensors `forward_packed` takes."""
    return {k: getattr(batch, k) for k in MODEL_KEYS}


def image_inputs(images: torch.Tensor, patch_size: int) -> dict:
    """Image-only rows (one image per row, no text) of equal-size images [B, 3, H, W]: the five
    tensors `forward_packed` takes, positions (0, row, col) as in training."""
    b, _, height, width = images.shape
    gh, gw = height // patch_size, width // patch_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    positions = torch.stack([torch.zeros(gh * gw, dtype=torch.long), rows.reshape(-1), cols.reshape(-1)])
    return {"tokens": torch.zeros(b, gh * gw, dtype=torch.long),
            "image_patches": torch.from_numpy(np.concatenate(image_patches(images, patch_size))),
            "is_image": torch.ones(b, gh * gw, dtype=torch.bool),
            "position_ids": positions[:, None, :].expand(3, b, gh * gw).contiguous(),
            "segment_ids": torch.zeros(b, gh * gw, dtype=torch.int32)}
