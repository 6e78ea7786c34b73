"""log p(caption | image) under GenLIP, and the held-out caption loss / perplexity built on it.

The score of a pair is the sum over its caption tokens (and, by default, end-of-turn tokens - the
tokens training puts loss on) of log softmax(logits)[next token], with the image and the prompt as
context. Pairs are scored in chunks small enough that the [rows, S, vocab] logits stay within a
memory budget (a Qwen-sized vocabulary makes logits, not activations, the large tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.eval.sequences import image_patches, model_inputs, pair_batch

DEFAULT_LOGIT_BUDGET = 1 << 26  # fp32 logit elements per forward (256 MB)


@torch.no_grad()
def token_log_probs(model, batch: dict) -> torch.Tensor:
    """float [B, S]: log p(labels[b, s] | context) at every position (0 where the label is -100)."""
    logits = model.forward_packed(**model_inputs(batch))["logits"].float()
    labels = batch.labels
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels >= 0, logp, torch.zeros_like(logp))


def rows_per_forward(seq_length: int, vocab_size: int, budget: int = DEFAULT_LOGIT_BUDGET) -> int:
    return max(1, budget // max(1, seq_length * vocab_size))


@torch.no_grad()
def pair_log_likelihoods(model, images: torch.Tensor, pairs: Sequence[tuple[int, Sequence[int]]],
                         layout: TextLayout, include_end: bool = True,
                         logit_budget: int = DEFAULT_LOGIT_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of caption-token log-probabilities per (image index, caption ids) pair.

    Args:
        images: float [N, 3, H, W] in [-1, 1], all the same size.
    Returns:
        (log_likelihood float64 [P], scored token count int64 [P]).
    """
    patch = model.config.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    patches = image_patches(images, patch)
    longest = grid[0] * grid[1] + max(layout.num_text_tokens(len(ids)) for _, ids in pairs)
    step = rows_per_forward(longest, model.config.vocab_size, logit_budget)
    sums, counts = [], []
    for start in range(0, len(pairs), step):
        batch, score_mask = pair_batch(patches, grid, pairs[start : start + step], layout, include_end)
        logp = token_log_probs(model, batch).double()
        sums.append((logp * score_mask).sum(dim=1))
        counts.append(score_mask.sum(dim=1).long())
    return torch.cat(sums), torch.cat(counts)


def caption_loss(model, tokenizer, images: torch.Tensor, captions: Sequence[str], layout: TextLayout,
                 logit_budget: int = DEFAULT_LOGIT_BUDGET) -> dict:
    """Held-out caption loss: mean next-token NLL over all caption + end tokens of all pairs (the
    training loss, measured on unseen pairs), and its perplexity."""
    pairs = [(i, tokenizer.encode(text)) for i, text in enumerate(captions)]
    logp, counts = pair_log_likelihoods(model, images, pairs, layout, True, logit_budget)
    loss = float(-logp.sum() / counts.sum())
    return {"caption_loss": loss, "caption_perplexity": math.exp(loss), "caption_tokens": int(counts.sum())}

