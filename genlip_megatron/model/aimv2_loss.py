"""AIMv2's loss for megatron's per-token loss accounting: exact weighted sum of two global means.

    loss = text_weight * (sum text CE / text tokens) + pixel_weight * (sum pixel MSE / pixel patches)

over the WHOLE global batch. Megatron's `calculate_per_token_loss` divides the summed micro-batch
losses (and grads) by ONE global count; we use the text-token count and pre-scale the pixel sums by
`pixel_scale = global text tokens / global pixel patches`. Both counts are known from the batch
alone (labels, image layout and drawn prefixes), so one small all-reduce over the data-parallel
group before the step makes the result exact under any DP size and micro-batch split.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from genlip_megatron.hf.aimv2_reference import has_next_patch_target


def local_loss_counts(batches, image_prefixes) -> torch.Tensor:
    """float64 [2] = (text loss tokens, pixel target patches) of this rank's micro-batches (packed
    batches with `loss_mask`, `is_image`, `segment_ids`) under the drawn prefixes (bool [B, S] each)."""
    text = sum(float(b.loss_mask.sum()) for b in batches)
    pixel = sum(float(has_next_patch_target(b.is_image, b.segment_ids, prefix).sum())
                for b, prefix in zip(batches, image_prefixes))
    return torch.tensor([text, pixel], dtype=torch.float64)


def pixel_scale(global_counts: torch.Tensor) -> float:
    """global text tokens / global pixel patches (0 when there is no pixel target, e.g. eval)."""
    text, pixel = global_counts.tolist()
    return text / pixel if pixel > 0 else 0.0


def aimv2_loss_func(loss_mask, scale: float, text_weight: float, pixel_weight: float, output):
    """megatron loss_func. output float32 [2, B, S] = (per-token CE, per-position pixel MSE).

    Returns (weighted sum, text-token count, report); report["loss_sum_and_count"] divides to the
    total loss, "text_sum_and_count" to the caption CE, and "pixel_sum" / pixel count to the MSE.
    """
    ce, mse = output[0], output[1]
    mask = loss_mask.to(ce.dtype)
    text_sum, pixel_sum = (ce * mask).sum(), mse.sum()
    total = text_weight * text_sum + pixel_weight * scale * pixel_sum
    count = mask.sum()
    report = {"loss_sum_and_count": torch.stack([total.detach(), count]),
              "text_sum_and_count": torch.stack([text_sum.detach(), count]),
              "pixel_sum": pixel_sum.detach().reshape(1)}
    return total, count.to(torch.int), report


class AIMv2MicroBatch(NamedTuple):
    """What one AIMv2 forward step consumes: the packed batch, its drawn prefix and the loss
    arguments (pixel_scale, text_weight, pixel_weight) of `aimv2_loss_func`."""

    batch: object  # data.packed_batch.PackedBatch
    image_prefix: torch.Tensor  # bool [B, S]
    loss_args: tuple[float, float, float]


def prepare_aimv2_step(micro_batches: list, *, model_cfg, seed: int, split, step: int) -> list[AIMv2MicroBatch]:
    """What an AIMv2 step needs for this rank's micro-batches: the prefix of each sample, drawn from
    (seed, step, its row's index in the step's global batch, its segment), and the loss arguments.
    `split`: the step's config.step_split.StepSplit. One all-reduce over the data-parallel group
    (the global text and pixel counts)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from genlip_megatron.model.aimv2_prefix import random_image_prefix

    dp_rank = parallel_state.get_data_parallel_rank()
    prefixes = [random_image_prefix(b.segment_ids, b.is_image, seed, step, split.rows(dp_rank, m))
                for m, b in enumerate(micro_batches)]
    counts = local_loss_counts(micro_batches, prefixes)
    if dist.is_initialized():
        dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    args = (pixel_scale(counts), model_cfg.text_loss_weight, model_cfg.pixel_loss_weight)
    return [AIMv2MicroBatch(b, prefix, args) for b, prefix in zip(micro_batches, prefixes)]


def aimv2_forward_step(data_iterator, model):
    """megatron forward_step_func: one AIMv2MicroBatch through this model stage."""
    from functools import partial

    item = next(data_iterator)
    device = next(model.parameters()).device
    b = item.batch.to(device)
    output = model(b.tokens, b.image_patches, b.is_image, b.position_ids, b.segment_ids, labels=b.labels,
                   image_prefix=item.image_prefix.to(device), loss_mask=b.loss_mask)
    return output, partial(aimv2_loss_func, b.loss_mask, *item.loss_args)
