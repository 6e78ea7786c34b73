"""One sample's token sequence: [image patches][prompt][caption][end tokens] (docs/batch.md).

Everything here is per sample and independent of packing, so a packed sequence is by construction
the concatenation of these per-sample arrays (plus padding) - the property the packing tests check.

Positions follow GenLIP's interleaved MRoPE convention: image patch (row, col) -> (t=0, h=row, w=col);
text tokens carry the same value on all three axes, starting at max(image position) + 1 =
max(grid_h, grid_w) and increasing by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SampleSequence", "TextLayout", "build_sample_sequence", "patchify", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label where no next token of the same sample exists (torch CE ignore_index)


@dataclass(frozen=True)
class TextLayout:
    """The fixed text around each caption: prompt ids (no loss) and end-of-turn ids (loss)."""

    prompt_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    max_caption_tokens: int

    def num_text_tokens(self, caption_len: int) -> int:
        return len(self.prompt_ids) + min(caption_len, self.max_caption_tokens) + len(self.end_ids)


@dataclass
class SampleSequence:
    """Arrays of one sample, L = grid_h * grid_w + prompt + caption + end tokens.

    tokens int64 [L] (0 at image positions), is_image bool [L], position_ids int64 [3, L],
    labels int64 [L] (IGNORE_INDEX where none), loss_mask float32 [L].
    """

    tokens: np.ndarray
    is_image: np.ndarray
    position_ids: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


def build_sample_sequence(grid_h: int, grid_w: int, caption: np.ndarray, text: TextLayout) -> SampleSequence:
    """Token layout of one image-caption pair.

    Args:
        grid_h, grid_w: image patch grid (image height / patch, width / patch).
        caption: int [T] caption ids (no prompt, no end tokens); truncated to text.max_caption_tokens.
        text: prompt and end ids.
    """
    num_image = grid_h * grid_w
    if num_image < 1:
        raise ValueError(f"an image needs at least one patch, got grid {grid_h}x{grid_w}")
    caption = np.asarray(caption, dtype=np.int64)[: text.max_caption_tokens]
    prompt = np.asarray(text.prompt_ids, dtype=np.int64)
    end = np.asarray(text.end_ids, dtype=np.int64)
    text_ids = np.concatenate([prompt, caption, end])
    length = num_image + len(text_ids)

    tokens = np.zeros(length, dtype=np.int64)
    tokens[num_image:] = text_ids
    is_image = np.zeros(length, dtype=bool)
    is_image[:num_image] = True

    position_ids = np.empty((3, length), dtype=np.int64)
    rows, cols = np.divmod(np.arange(num_image, dtype=np.int64), grid_w)  # row-major patch order
    position_ids[0, :num_image] = 0
    position_ids[1, :num_image] = rows
    position_ids[2, :num_image] = cols
    position_ids[:, num_image:] = max(grid_h, grid_w) + np.arange(len(text_ids), dtype=np.int64)

    # Position s predicts the token at s + 1 of the same sample; image positions have no token id, so
    # a label exists only where s + 1 is text. Loss only where that target is a caption or end token.
    labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
    labels[num_image - 1 : length - 1] = text_ids
    first_loss_target = num_image + len(prompt)  # index of the first caption/end token
    loss_mask = np.zeros(length, dtype=np.float32)
    loss_mask[first_loss_target - 1 : length - 1] = 1.0
    return SampleSequence(tokens, is_image, position_ids, labels, loss_mask)


def patchify(image: np.ndarray, patch: int) -> np.ndarray:
    """float [3, H, W] -> [H/P * W/P, 3*P*P]: patches in row-major grid order, each flattened in
    (channel, row, col) order - the column order of Conv2d.weight.reshape(width, -1)."""
    channels, height, width = image.shape
    gh, gw = height // patch, width // patch
    grid = image[:, : gh * patch, : gw * patch].reshape(channels, gh, patch, gw, patch)
    return np.ascontiguousarray(grid.transpose(1, 3, 0, 2, 4)).reshape(gh * gw, channels * patch * patch)
