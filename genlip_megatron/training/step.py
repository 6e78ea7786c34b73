"""One optimizer step: forward/backward over the step's micro-batches, global loss, guarded update.

Loss (docs/batch.md): sum of next-token CE over loss positions of the WHOLE global batch divided by
the number of those positions. With `calculate_per_token_loss`, `loss_func` returns (sum, count,
report); megatron backpropagates the sums and `finalize_model_grads` divides the grads by the count
all-reduced over data-parallel ranks, so the gradient is exact under any DP size / micro-batch split.

A step is skipped (no parameter, optimizer-state or lr-schedule change) when the global loss or the
global grad norm is not finite. All ranks decide alike: both come from collectives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from genlip_megatron.data.context_split import ContextShard
from genlip_megatron.training.flops import ModelShape, count_tokens, train_step_flops


@dataclass
class StepResult:
    """Global (all-rank) outcome of one step. loss = loss_sum / loss_tokens."""

    loss: float
    loss_tokens: int
    grad_norm: float | None  # None when the step was skipped before the norm was known
    skipped: bool
    stop_requested: bool  # some rank received SIGTERM / SIGUSR1 during this step
    save_requested: bool  # some rank asked for a checkpoint after this step (no stop)
    samples: int  # image-caption samples in the global batch
    tokens: int  # non-padding tokens in the global batch
    flops: float  # model FLOPs of the step (training/flops.py), all ranks together
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds on this rank


def _loss_func(loss_mask: torch.Tensor, per_token_ce: torch.Tensor):
    """per_token_ce fp32 [B, S] -> (CE sum, loss-token count, report) for megatron's schedule."""
    mask = loss_mask.to(per_token_ce.dtype)
    total = (per_token_ce * mask).sum()
    count = mask.sum().to(torch.int)
    return total, count, {"loss_sum_and_count": torch.stack([total.detach(), count.to(total.dtype)])}


def genlip_forward_step(data_iterator, model):
    """megatron forward_step_func: one GenLIP micro-batch through this model chunk: a PackedBatch, or
    under context parallelism this rank's ContextShard of it (data/context_split.py)."""
    batch = next(data_iterator).to(next(model.parameters()).device)
    context = batch.positions if isinstance(batch, ContextShard) else None
    output = model(batch.tokens, batch.image_patches, batch.is_image, batch.position_ids, batch.segment_ids,
                   labels=batch.labels, spans=batch.spans, loss_mask=batch.loss_mask, context=context)
    return output, partial(_loss_func, batch.loss_mask)


def is_loss_reporter() -> bool:
    """The ranks whose schedule's loss sums and counts are added up: last PP stage, TP rank 0, one
    per DP x CP rank (under context parallelism each holds the CE of its own share of the positions)."""
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


def is_batch_reporter() -> bool:
    """The ranks that count whole micro-batches (samples, tokens, FLOPs): one per DP replica, the
    loss reporter of CP rank 0 (every CP rank of a replica holds the same micro-batches)."""
    return is_loss_reporter() and parallel_state.get_context_parallel_rank() == 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(modules, micro_batches: list, shape: ModelShape, device: torch.device,
               stop_signal: bool = False, save_request: bool = False) -> StepResult:
    """Run one step on `micro_batches` (this rank's share of the global batch, in order).

    stop_signal / save_request: this rank's flags; the result carries whether ANY rank set them.
    """
    model, optimizer = modules.model, modules.optimizer
    seconds = {}
    start = time.perf_counter()
    inputs = modules.prepare_micro_batches(micro_batches, step=modules.scheduler.num_steps)
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    # Every virtual stage consumes every micro-batch (each needs positions and masks).
    iterators = [iter(inputs) for _ in model]
    reports = get_forward_backward_func()(
        forward_step_func=modules.forward_step,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model, num_microbatches=len(micro_batches), seq_length=micro_batches[0].seq_length,
        micro_batch_size=micro_batches[0].micro_batch_size, forward_only=False)
    _synchronize(device)
    seconds["forward_backward"] = time.perf_counter() - start

    start = time.perf_counter()
    stats = torch.zeros(7, dtype=torch.float64, device=device)
    if is_loss_reporter():
        for report in reports:
            stats[:2] += report["loss_sum_and_count"].to(device, torch.float64)
    if is_batch_reporter():
        for batch in micro_batches:
            counts = count_tokens(batch.spans, batch.loss_mask)
            stats[2] += counts.samples
            stats[3] += counts.tokens
            stats[4] += train_step_flops(shape, counts)
    stats[5], stats[6] = float(stop_signal), float(save_request)
    dist.all_reduce(stats)  # one collective gives every rank the global loss, counts and flags
    loss_sum, loss_tokens, samples, tokens, flops, stops, saves = stats.tolist()
    loss = loss_sum / loss_tokens if loss_tokens > 0 else float("nan")
    seconds["reduce_stats"] = time.perf_counter() - start

    start = time.perf_counter()
    grad_norm, skipped = None, not math.isfinite(loss)
    if not skipped:
        optimizer.prepare_grads()  # grads -> main grads; optimizer.step() repeats it (idempotent)
        grad_norm = float(optimizer.get_grad_norm())
        skipped = not math.isfinite(grad_norm)
    if not skipped:
        updated, _, _ = optimizer.step()
        skipped = not updated
        if updated:
            modules.scheduler.step(increment=1)
    _synchronize(device)
    seconds["optimizer"] = time.perf_counter() - start
    return StepResult(loss=loss, loss_tokens=int(loss_tokens), grad_norm=grad_norm, skipped=skipped,
                      stop_requested=stops > 0, save_requested=saves > 0, samples=int(samples), tokens=int(tokens), flops=flops,
                      seconds=seconds)


def current_lr(optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)
