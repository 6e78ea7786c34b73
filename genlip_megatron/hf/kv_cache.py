"""Text positions and attention masks of a GenLIP forward that fills or continues a KV cache.

A cached forward has two phases (transformers' convention: `cache` - formerly `past_key_values` -
and `use_cache`):
  prefill   model(pixel_values, input_ids=prompt, use_cache=True): image patches and prompt tokens run
            once under the prefix-LM mask; every layer appends its rotated keys and its values to a
            `transformers.DynamicCache`; the output carries the cache (`cache`) and `rope_deltas`.
  continue  model(input_ids=new, cache=cache, rope_deltas=..., attention_mask=...): the new
            text tokens attend to every valid cached key and causally to each other, at the text
            positions that follow the prefix; the cache grows by the new tokens.

Positions (interleaved MRoPE): a text token has the same position on all three axes, max(grid_h,
grid_w) + its index among the sample's REAL text tokens (padding is skipped, so left and right
padding give the same positions). `rope_deltas` [B, 1] is the position of the next text token minus
the cache length: token j of a continuation sits at cache_length + j + rope_deltas, which holds as
long as continuation tokens are real (as in generation, where each step appends one token per row).

`attention_mask` follows transformers: [B, text tokens], over the TEXT only (past text + new), 1 = real
token; image tokens are always valid. A padding query sees only itself so no softmax row is empty.
"""

from __future__ import annotations

import torch


def text_positions(num_text: int, text_start: int, attention_mask: torch.Tensor | None, batch: int,
                   device) -> torch.Tensor:
    """int64 [B, T]: text_start + index among real tokens (0 at padding)."""
    if attention_mask is None:
        return (text_start + torch.arange(num_text, device=device)).expand(batch, num_text)
    real = attention_mask.bool()
    return torch.where(real, text_start + real.long().cumsum(1) - 1, 0)


def prefill_rope_deltas(num_text: int, text_start: int, attention_mask: torch.Tensor | None, batch: int,
                        cache_length: int, device) -> torch.Tensor:
    """int64 [B, 1]: position of each row's next text token minus the cache length after the prefill."""
    real = (torch.full((batch,), num_text, device=device) if attention_mask is None
            else attention_mask.bool().sum(1))
    return (text_start + real - cache_length).unsqueeze(1)


def continuation_positions(cache_length: int, num_new: int, rope_deltas: torch.Tensor) -> torch.Tensor:
    """int64 [3, B, T]: the MRoPE positions of num_new text tokens appended after cache_length keys."""
    index = cache_length + torch.arange(num_new, device=rope_deltas.device)
    return (index[None, :] + rope_deltas.reshape(-1, 1)).unsqueeze(0).expand(3, -1, -1)


def continuation_allowed(cache_length: int, num_new: int, attention_mask: torch.Tensor | None, batch: int,
                         device) -> torch.Tensor:
    """bool [B, 1, T, cache_length + T]: True where new query i may see key j (cached keys first).

    attention_mask: None (all real) or [B, past text + T] over text tokens, so the first
    cache_length - (mask length - T) cached keys (the image) are always valid.
    """
    total = cache_length + num_new
    if attention_mask is None:
        key_valid = torch.ones(batch, total, dtype=torch.bool, device=device)
    else:
        image = total - attention_mask.shape[1]
        if image < 0:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens but the cache and "
                             f"the new tokens hold only {total}")
        key_valid = torch.cat([torch.ones(batch, image, dtype=torch.bool, device=device),
                               attention_mask.bool()], dim=1)
    query = torch.arange(num_new, device=device)[:, None]
    key = torch.arange(total, device=device)[None, :] - cache_length
    causal = key <= query  # [T, total]: every cached key (key < 0) and new keys up to the query
    allowed = causal[None] & key_valid[:, None, :]
    diagonal = (key == query)[None] & ~key_valid[:, None, cache_length:].transpose(1, 2)
    return (allowed | diagonal).unsqueeze(1)
