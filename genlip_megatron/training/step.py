"""One optimizer step: forward/backward over the step's micro-batches, global loss, guarded update.

What the step computes comes from the objective's spec (objectives/): `prepare_step` turns this
rank's micro-batches into the items its `forward_step` consumes, and its loss_func returns (sum,
count, report) for megatron's per-token accounting (`calculate_per_token_loss`): megatron
backpropagates the sums and `finalize_model_grads` divides the grads by the count all-reduced over
data-parallel ranks, so the gradient is exact under any DP size / micro-batch split.

A step is skipped (no parameter, optimizer-state or lr-schedule change) when the global loss or the
global grad norm is not finite. All ranks decide alike: both come from collectives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func


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
    flops: float  # model FLOPs of the step (the objective's train_flops), all ranks together
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds on this rank


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


def train_step(modules, micro_batches: list, device: torch.device,
               stop_signal: bool = False, save_request: bool = False) -> StepResult:
    """Run one step on `micro_batches` (this rank's share of the global batch, in order).

    stop_signal / save_request: this rank's flags; the result carries whether ANY rank set them.
    """
    model, optimizer = modules.model, modules.optimizer
    seconds = {}
    start = time.perf_counter()
    objective, cfg = modules.objective, modules.cfg
    items = objective.prepare_step(cfg, micro_batches, split=modules.split, step=modules.scheduler.num_steps)
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    # Every virtual stage consumes every micro-batch (each needs positions and masks).
    iterators = [iter(items) for _ in model]

    def forward_step(data_iterator, chunk):  # megatron's forward_step_func
        return objective.forward_step(next(data_iterator), chunk)

    reports = get_forward_backward_func()(
        forward_step_func=forward_step,
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
        for batch, item in zip(micro_batches, items):
            stats[2] += batch.num_samples
            stats[3] += int((batch.spans[:, 2] - batch.spans[:, 0]).sum())
            stats[4] += objective.train_flops(cfg, item)
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
