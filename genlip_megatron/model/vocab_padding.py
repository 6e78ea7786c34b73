"""Keep the padded rows of a vocabulary-parallel head out of the softmax."""

from __future__ import annotations

import torch
from megatron.core import parallel_state


def mask_vocab_padding(logits: torch.Tensor, real_vocab: int, padded_vocab: int) -> torch.Tensor:
    """logits [..., padded_vocab / TP] (this rank's slice) -> padded columns set to -inf.

    The vocabulary is padded to a multiple of make_vocab_size_divisible_by x TP; without this the
    padding rows would take softmax mass, and the exported model (true vocabulary only) would give
    different probabilities from the trained one.
    """
    if real_vocab >= padded_vocab:
        return logits
    local = logits.shape[-1]
    first = parallel_state.get_tensor_model_parallel_rank() * local
    ids = torch.arange(first, first + local, device=logits.device)
    return logits.masked_fill(ids >= real_vocab, float("-inf"))
