"""AIMv2's loss for megatron's per-token loss accounting: exact weighted sum of two global means.

    loss = text_weight * (sum text CE / text tokens) + pixel_weight * (sum pixel MSE / pixel patches)

over the WHOLE global batch. Megatron's `calculate_per_token_loss` divides the summed micro-batch
losses (and grads) by ONE global count; we use the text-token count and pre-scale the pixel sums by
`pixel_scale = global text tokens / global pixel patches`. Both counts are known from the batch
alone (labels, image layout and drawn prefixes), so one small all-reduce over the data-parallel
group before the step makes the result exact under any DP size and micro-batch split.
"""

from __future__ import annotations

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
