"""One sample's token sequence: [image patches][prompt][caption][end text] (docs/batch.md), and its caps.

Everything here is per sample and independent of packing, so a packed sequence is by construction
the concatenation of these per-sample arrays (plus padding) - the property the packing tests check.

Positions follow GenLIP's interleaved MRoPE convention: image patch (row, col) -> (t=0, h=row, w=col);
text tokens carry the same value on all three axes, starting at max(image position) + 1 =
max(grid_h, grid_w) and increasing by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["SampleSequence", "TextLayout", "build_sample_sequence", "patchify", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label where no next token of the same sample exists (torch CE ignore_index)


@dataclass(frozen=True)
class TextLayout:
    """The fixed text around each caption and the two length caps.

    prompt_ids: after the image, no loss. end_ids: the end text (official: "<|im_end|>\n"), loss.
    max_caption_tokens: a longer caption is cut to this many tokens and then gets NO end ids - it
        never ended, and an end token after it would teach the model to stop early. None: no cap.
    max_sample_tokens: the whole sample (image + prompt + caption + end) is cut to this many tokens,
        from the end, as the official code cuts a sample to its max length: the end ids go first,
        then caption tokens. None: no cap (the packer then applies seq_length).
    """

    prompt_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    max_caption_tokens: int | None = None
    max_sample_tokens: int | None = None

    def capped(self, seq_length: int) -> "TextLayout":
        """This layout with max_sample_tokens at most seq_length (a sample must fit one sequence)."""
        cap = seq_length if self.max_sample_tokens is None else min(self.max_sample_tokens, seq_length)
        return replace(self, max_sample_tokens=cap)

    def _text_room(self, num_image: int) -> int | None:
        """Text tokens the sample cap leaves after `num_image` image tokens (None: no cap)."""
        if self.max_sample_tokens is None:
            return None
        room = self.max_sample_tokens - num_image
        if room <= len(self.prompt_ids):
            raise ValueError(f"{num_image} image tokens + the {len(self.prompt_ids)}-token prompt leave no "
                             f"caption token within the {self.max_sample_tokens}-token sample cap")
        return room

    def text_ids(self, caption: np.ndarray, num_image: int = 0) -> tuple[np.ndarray, int]:
        """(prompt + caption + end ids after both caps, how many end ids survived)."""
        caption = np.asarray(caption, dtype=np.int64)
        end = np.asarray(self.end_ids, dtype=np.int64)
        if self.max_caption_tokens is not None and len(caption) > self.max_caption_tokens:
            caption, end = caption[: self.max_caption_tokens], end[:0]
        ids = np.concatenate([np.asarray(self.prompt_ids, dtype=np.int64), caption, end])
        room = self._text_room(num_image)
        if room is not None:
            ids = ids[:room]
        return ids, max(0, len(ids) - len(self.prompt_ids) - len(caption))

    def num_text_tokens(self, caption_len: int, num_image: int = 0) -> int:
        """len(text_ids(...)[0]) without building it (the packer asks this for every sample)."""
        if self.max_caption_tokens is not None and caption_len > self.max_caption_tokens:
            text = len(self.prompt_ids) + self.max_caption_tokens
        else:
            text = len(self.prompt_ids) + caption_len + len(self.end_ids)
        room = self._text_room(num_image)
        return text if room is None else min(text, room)

    def sample_length(self, num_image: int, caption_len: int) -> int:
        """Tokens of a sample with `num_image` image tokens and a `caption_len`-token caption."""
        return num_image + self.num_text_tokens(caption_len, num_image)


@dataclass
class SampleSequence:
    """Arrays of one sample, L = grid_h * grid_w + prompt + caption + end tokens (after the caps).

    tokens int64 [L] (0 at image positions), is_image bool [L], position_ids int64 [3, L],
    labels int64 [L] (IGNORE_INDEX where none), loss_mask float32 [L]; end_tokens: how many of the
    layout's end ids the sample ends with (fewer, or none, when a cap cut it).
    """

    tokens: np.ndarray
    is_image: np.ndarray
    position_ids: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    end_tokens: int = 0

    def __len__(self) -> int:
        return len(self.tokens)


def build_sample_sequence(grid_h: int, grid_w: int, caption: np.ndarray, text: TextLayout) -> SampleSequence:
    """Token layout of one image-caption pair.

    Args:
        grid_h, grid_w: image patch grid (image height / patch, width / patch).
        caption: int [T] caption ids (no prompt, no end tokens); cut by the layout's caps.
        text: prompt and end ids, caps.
    """
    num_image = grid_h * grid_w
    if num_image < 1:
        raise ValueError(f"an image needs at least one patch, got grid {grid_h}x{grid_w}")
    text_ids, end_tokens = text.text_ids(caption, num_image)
    prompt_len = len(text.prompt_ids)
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
    first_loss_target = num_image + prompt_len  # index of the first caption/end token
    loss_mask = np.zeros(length, dtype=np.float32)
    loss_mask[first_loss_target - 1 : length - 1] = 1.0
    return SampleSequence(tokens, is_image, position_ids, labels, loss_mask, end_tokens)


def patchify(image: np.ndarray, patch: int) -> np.ndarray:
    """float [3, H, W] -> [H/P * W/P, 3*P*P]: patches in row-major grid order, each flattened in
    (channel, row, col) order - the column order of Conv2d.weight.reshape(width, -1)."""
    channels, height, width = image.shape
    gh, gw = height // patch, width // patch
    grid = image[:, : gh * patch, : gw * patch].reshape(channels, gh, patch, gw, patch)
    return np.ascontiguousarray(grid.transpose(1, 3, 0, 2, 4)).reshape(gh * gw, channels * patch * patch)
