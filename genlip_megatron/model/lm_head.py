"""The vocabulary-parallel language-model head and its cross-entropy, on the loss positions only.

Only caption (and end-of-text) tokens carry loss: about a quarter of a stage-1 pack and under a tenth
of a stage-2 one. `loss_position_cross_entropy` picks those positions out of the final hidden stream
and runs the (optional) `proj`, the head and the cross-entropy on them alone; the other positions
get a loss of 0, so the result has the [B, S] per-token shape megatron-core's per-token loss
accounting (and our loss functions, which multiply by `loss_mask`) expect. `full_cross_entropy` is
the head on every position, kept for comparison (bench/model_step.py, tests) and as the path that
evaluation's full logits come from.

NOTE: `proj` runs after the selection, not before: it is per-position, so the result is the same and
the non-loss positions skip its FLOPs too.

Sequence parallelism: the hidden stream is split along the sequence over the TP ranks and the
head's ColumnParallelLinear all-gathers its input along dim 0 (reduce-scatter in backward), which
needs the same row count on every rank. Every rank holds the whole `loss_mask`, so each computes
every rank's count without communication, pads its own selection to the largest count (padded rows
repeat row 0 and their losses are dropped, so they get no gradient), and knows the labels of every
gathered row. The gather then moves loss rows only, not the whole sequence.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel

from genlip_megatron.model.vocab_padding import mask_vocab_padding


def _vocab_parallel_ce(head, rows, labels, real_vocab: int, padded_vocab: int) -> torch.Tensor:
    """rows [n, 1, E], labels int64 [n] (-100 allowed) -> fp32 CE [n]."""
    logits, _ = head(rows)  # [n', 1, V/tp]; under SP the head gathers the rows of every TP rank
    logits = mask_vocab_padding(logits, real_vocab, padded_vocab)
    # vocab_parallel_cross_entropy needs an in-range label everywhere; callers drop the others.
    loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.clamp(min=0)[:, None])
    return loss[:, 0]


def full_cross_entropy(hidden, labels, head, *, real_vocab: int, padded_vocab: int,
                       proj=None) -> torch.Tensor:
    """The head on every position. hidden [S', B, H] (S' = S/tp under SP), labels [B, S]
    -> fp32 CE [B, S] (meaningless where there is no label; the loss mask drops those)."""
    if proj is not None:
        hidden = proj(hidden)
    s, b = labels.shape[1], labels.shape[0]
    logits, _ = head(hidden)  # [S, B, V/tp]; SP gathers the sequence here
    logits = mask_vocab_padding(logits, real_vocab, padded_vocab)
    safe = labels.clamp(min=0).transpose(0, 1).contiguous()
    loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), safe)
    return loss.reshape(s, b).transpose(0, 1).contiguous()


def _selection(loss_mask: torch.Tensor, sequence_parallel: bool):
    """Which rows of this rank's flattened [S', B] stream carry loss, and where every gathered row
    lands in the flattened [S, B] stream.

    Returns (local_rows int64 [m], gathered_positions int64 [tp' * m], gathered_valid bool [tp' * m]),
    tp' = TP size under SP, else 1. Rows past a rank's own count are padding (valid False).
    """
    carries = (loss_mask != 0).transpose(0, 1).reshape(-1)  # [S * B], s-major like the stream
    if not sequence_parallel:
        rows = carries.nonzero().squeeze(1)
        return rows, rows, torch.ones_like(rows, dtype=torch.bool)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    per_rank = carries.view(tp, -1)  # SP splits the sequence dim: rank r holds a contiguous block
    counts = per_rank.sum(1)
    width = max(int(counts.max()), 1)  # at least one row so every rank runs the same collectives
    slot = torch.arange(width, device=loss_mask.device)
    local = torch.zeros(tp, width, dtype=torch.long, device=loss_mask.device)
    for r in range(tp):  # tp is small; each row is one nonzero()
        found = per_rank[r].nonzero().squeeze(1)
        local[r, : found.numel()] = found
    valid = slot[None, :] < counts[:, None]
    gathered = local + torch.arange(tp, device=loss_mask.device)[:, None] * per_rank.shape[1]
    return local[rank], gathered.reshape(-1), valid.reshape(-1)


def loss_position_cross_entropy(hidden, labels, loss_mask, head, *, real_vocab: int,
                                padded_vocab: int, sequence_parallel: bool, proj=None) -> torch.Tensor:
    """The head and cross-entropy on the positions where loss_mask != 0.

    Args:
        hidden: [S', B, H] final hidden stream after the last norm (S' = S/tp under SP).
        labels: int64 [B, S]; loss_mask: float [B, S] (whole sequence on every TP rank).
        head: the vocabulary-parallel ColumnParallelLinear; proj: optional per-position Linear.
    Returns:
        fp32 [B, S]: the CE at loss positions, 0 elsewhere.
    """
    b, s = labels.shape
    local_rows, positions, valid = _selection(loss_mask, sequence_parallel)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, local_rows)
    if proj is not None:
        rows = proj(rows)
    flat_labels = labels.transpose(0, 1).reshape(-1)
    loss = _vocab_parallel_ce(head, rows[:, None, :], flat_labels[positions], real_vocab, padded_vocab)
    out = loss.new_zeros(s * b).index_put((positions[valid],), loss[valid])
    return out.view(s, b).transpose(0, 1)
