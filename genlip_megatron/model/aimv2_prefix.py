"""AIMv2's random prefix, drawn in the batch (not in the model) so every rank and every test agrees.

Per sample with n image patches, a prefix length uniform in [1, n - 1] (the prefix patches attend
bidirectionally in the encoder, the rest causally; the pixel loss skips them). The draw is a pure
function of (seed, key, row id, segment): the trainer passes the optimizer step as `key` and each
row's index in the step's global batch as its row id, so TP and PP peers, which read the same
batch, draw the same prefixes without communicating, a resumed run draws them again identically,
and the draws do not depend on the data-parallel size or the micro-batch split.
Plain torch + numpy: the data path and the trainer may import it without megatron-core.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def random_image_prefix(segment_ids: torch.Tensor, is_image: torch.Tensor, seed: int,
                        key: int, row_ids: Sequence[int] | None = None) -> torch.Tensor:
    """bool [B, S]: True at the image patches that belong to their sample's prefix.

    Args:
        segment_ids: int [B, S] (-1 at padding); is_image: bool [B, S]; seed, key: ints >= 0.
        row_ids: an id per row (default: 0..B-1), e.g. its index in the step's global batch.
    A one-patch image gets prefix 1 (nothing to predict).
    """
    prefix = torch.zeros_like(is_image)
    row_ids = list(range(is_image.shape[0])) if row_ids is None else list(row_ids)
    for row in range(is_image.shape[0]):
        image_segments = segment_ids[row][is_image[row]]
        for segment in torch.unique(image_segments).tolist():
            positions = ((segment_ids[row] == segment) & is_image[row]).nonzero().squeeze(1)
            n = positions.numel()
            rng = np.random.default_rng([seed, key, row_ids[row], segment])
            length = 1 if n < 2 else int(rng.integers(1, n))  # upper bound exclusive: [1, n - 1]
            prefix[row, positions[:length]] = True
    return prefix


def full_image_prefix(is_image: torch.Tensor) -> torch.Tensor:
    """Evaluation: every patch is in the prefix, i.e. full bidirectional attention, no pixel loss."""
    return is_image.clone()
