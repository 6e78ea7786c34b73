"""GenLIP's forward step and loss for megatron's schedules.

Loss (docs/batch.md): sum of next-token CE over loss positions of the WHOLE global batch divided by
the number of those positions. With `calculate_per_token_loss`, `loss_func` returns (sum, count,
report); megatron backpropagates the sums and `finalize_model_grads` divides the grads by the count
all-reduced over data-parallel ranks, so the gradient is exact under any DP size / micro-batch split.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch


def loss_func(loss_mask: torch.Tensor, per_token_ce: torch.Tensor):
    """per_token_ce fp32 [B, S] -> (CE sum, loss-token count, report) for megatron's schedule."""
    mask = loss_mask.to(per_token_ce.dtype)
    total = (per_token_ce * mask).sum()
    count = mask.sum().to(torch.int)
    return total, count, {"loss_sum_and_count": torch.stack([total.detach(), count.to(total.dtype)])}


class ContextItem(NamedTuple):
    """A micro-batch under context parallelism: the whole PackedBatch (what counts and FLOPs read)
    and this CP rank's ContextShard of it (what the model runs; data/context_split.py)."""

    batch: object
    shard: object


def prepare_step(micro_batches: list, cp: int, chunks: int) -> list:
    """The micro-batches as they are, or under context parallelism (cp > 1) each with this CP rank's
    share: every rank of the CP group reads the same micro-batches and computes the same split,
    with no communication."""
    if cp == 1:
        return list(micro_batches)
    from megatron.core import parallel_state

    from genlip_megatron.data.context_split import split_batch

    rank = parallel_state.get_context_parallel_rank()
    return [ContextItem(batch, split_batch(batch, cp, chunks, rank)) for batch in micro_batches]


def whole_batch(item):
    """The PackedBatch an item of `prepare_step` stands for."""
    return item.batch if isinstance(item, ContextItem) else item


def forward_step(item, model):
    """One item of `prepare_step` through this model chunk: (per-token CE or hidden stream,
    loss_func); under context parallelism the CE of this rank's positions only."""
    device = next(model.parameters()).device
    if isinstance(item, ContextItem):
        batch = item.shard.to(device)
        context = batch.positions
    else:
        batch, context = item.to(device), None
    output = model(batch.tokens, batch.image_patches, batch.is_image, batch.position_ids, batch.segment_ids,
                   labels=batch.labels, spans=batch.spans, loss_mask=batch.loss_mask, context=context)
    return output, partial(loss_func, batch.loss_mask)
