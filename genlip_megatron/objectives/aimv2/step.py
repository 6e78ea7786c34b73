"""AIMv2's step: the per-step batch preparation (random prefixes, global loss counts) and the
forward step megatron's schedules call (docs/aimv2.md "Batches and the prefix")."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from genlip_megatron.model.aimv2_loss import aimv2_loss_func, local_loss_counts, pixel_scale
from genlip_megatron.model.aimv2_prefix import random_image_prefix


class AIMv2MicroBatch(NamedTuple):
    """What one AIMv2 forward step consumes: the packed batch, its drawn prefix and the loss
    arguments (pixel_scale, text_weight, pixel_weight) of `aimv2_loss_func`."""

    batch: object  # data.packed_batch.PackedBatch
    image_prefix: torch.Tensor  # bool [B, S]
    loss_args: tuple[float, float, float]


def prepare_step(micro_batches: list, *, model_cfg, seed: int, split, step: int) -> list[AIMv2MicroBatch]:
    """What an AIMv2 step needs for this rank's micro-batches: the prefix of each sample, drawn from
    (seed, step, its row's index in the step's global batch, its segment), and the loss arguments.
    `split`: the step's config.step_split.StepSplit. One all-reduce over the data-parallel group
    (the global text and pixel counts)."""
    dp_rank = parallel_state.get_data_parallel_rank()
    prefixes = [random_image_prefix(b.segment_ids, b.is_image, seed, step, split.rows(dp_rank, m))
                for m, b in enumerate(micro_batches)]
    counts = local_loss_counts(micro_batches, prefixes)
    if dist.is_initialized():
        dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    args = (pixel_scale(counts), model_cfg.text_loss_weight, model_cfg.pixel_loss_weight)
    return [AIMv2MicroBatch(b, prefix, args) for b, prefix in zip(micro_batches, prefixes)]


def forward_step(item: AIMv2MicroBatch, model):
    """One AIMv2MicroBatch through this model stage: (output, loss_func)."""
    device = next(model.parameters()).device
    b = item.batch.to(device)
    output = model(b.tokens, b.image_patches, b.is_image, b.position_ids, b.segment_ids, labels=b.labels,
                   image_prefix=item.image_prefix.to(device), loss_mask=b.loss_mask)
    return output, partial(aimv2_loss_func, b.loss_mask, *item.loss_args)
