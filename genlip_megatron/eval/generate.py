"""Greedy caption generation from the GenLIP trunk itself: [image][prompt] -> argmax next token, repeat.

No KV cache: each step re-runs the whole (short) sequence, which keeps this a few lines on top of the
reference model and is cheap at evaluation sizes (49 image tokens and a ~10-token caption for the
tiny preset). Images of one call share a size, so all rows have the same length at every step and run
as one batch without padding; finished rows keep running until every row has ended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.eval.sequences import image_patches, model_inputs, pair_batch


def _ends_with(ids: Sequence[int], tail: Sequence[int]) -> bool:
    return len(tail) > 0 and len(ids) >= len(tail) and list(ids[len(ids) - len(tail):]) == list(tail)


@torch.no_grad()
def greedy_captions(model, images: torch.Tensor, layout: TextLayout, max_new_tokens: int = 32
                    ) -> list[list[int]]:
    """Generate captions for float [N, 3, H, W] images in [-1, 1].

    Returns:
        per image the generated ids, without the prompt and without the end-of-turn tokens; a caption
        that reaches max_new_tokens without ending is returned as generated so far.
    """
    patch = model.config.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    patches = image_patches(images, patch)
    # The generated tokens play the caption's part; no end tokens are appended behind them.
    open_layout = TextLayout(layout.prompt_ids, (), max_new_tokens)
    generated: list[list[int]] = [[] for _ in range(len(images))]
    finished = np.zeros(len(images), dtype=bool)
    for _ in range(max_new_tokens):
        batch, _ = pair_batch(patches, grid, list(enumerate(generated)), open_layout)
        logits = model.forward_packed(**model_inputs(batch))["logits"][:, -1]  # the last text position
        next_ids = logits.argmax(dim=-1).tolist()
        for row, token in enumerate(next_ids):
            if not finished[row]:
                generated[row].append(int(token))
                finished[row] = _ends_with(generated[row], layout.end_ids)
        if finished.all():
            break
    return [ids[: len(ids) - len(layout.end_ids)] if _ends_with(ids, layout.end_ids) else ids
            for ids in generated]


def caption_images(model, tokenizer, images: torch.Tensor, layout: TextLayout, max_new_tokens: int = 32
                   ) -> list[str]:
    """greedy_captions, decoded to text with the tokenizer (duck-typed: decode(ids) -> str)."""
    return [tokenizer.decode(ids).strip() for ids in greedy_captions(model, images, layout, max_new_tokens)]
