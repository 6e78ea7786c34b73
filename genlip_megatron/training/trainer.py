"""The training loop: resume, step, log, checkpoint, and stop cleanly on signals or bad steps.

    train(cfg, rank, world, ...)      init process groups + megatron parallel state, run, tear down
      run_training(cfg)               needs the parallel state already initialised (tests use pools)
        resume: `latest` in checkpoint.dir, else checkpoint.load (finetune: weights only); a config that
                differs from the checkpoint's is refused unless checkpoint.allow_changes names each key
                (resume_policy.py gives every allowed change its meaning)
        per step: pull the step's micro-batches -> train_step (step.py) -> metrics (rank 0)
                  -> every train.eval_interval steps: held-out loss on data.eval_manifest (held_out.py)
                  -> stop after K non-finite steps in a row (EXIT_NONFINITE, no save)
                  -> save every checkpoint.save_interval, at the end, on a `save_now` file, or on
                     SIGTERM/SIGUSR1 (then EXIT_REQUEUE)
A watchdog aborts the process when a step (with its save) exceeds train.step_timeout_s.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import torch.distributed as dist
from megatron.core import parallel_state

from genlip_megatron.checkpoint.run_dir import (
    check_writable,
    read_latest,
    read_run_config,
    save_now_path,
)
from genlip_megatron.checkpoint.sharded import load_checkpoint, save_checkpoint
from genlip_megatron.config.validate import check
from genlip_megatron.runtime import device as device_lib
from genlip_megatron.training import end_of_run, faults
from genlip_megatron.training.batches import build_batch_source
from genlip_megatron.training.held_out import HeldOutLoss
from genlip_megatron.training.metrics import MetricsLogger, throughput
from genlip_megatron.training.mfu import mfu_peak_tflops
from genlip_megatron.training.model_setup import build_training_modules
from genlip_megatron.training.param_sync import gathered_params
from genlip_megatron.training.resume_policy import ResumePlan, apply_resume_plan, resume_plan, resume_source
from genlip_megatron.training.run_banner import banner_lines, parameter_count
from genlip_megatron.training.run_inputs import resolve_run_inputs
from genlip_megatron.training.step import current_lr, train_step

log = logging.getLogger("genlip_megatron.train")



@dataclass
class TrainOutcome:
    exit_code: int
    iteration: int  # steps completed (skipped ones included)
    losses: dict[int, float] = field(default_factory=dict)  # step -> global loss
    eval_losses: dict[int, float] = field(default_factory=dict)  # step -> held-out loss (data.eval_manifest)
    skipped_steps: int = 0
    seconds: dict = field(default_factory=dict)  # phase -> total wall seconds on this rank
    step_seconds: list = field(default_factory=list)  # per step: phase -> wall seconds (benchmarks)
    step_work: list = field(default_factory=list)  # per step: (samples, tokens) of the global batch
    step_flops: list = field(default_factory=list)  # per step: model FLOPs of the global batch
    message: str = ""


def _save_requested_by_file(cfg) -> bool:
    path = save_now_path(cfg.checkpoint.dir) if cfg.checkpoint.dir else ""
    if path and dist.get_rank() == 0 and os.path.exists(path):
        os.remove(path)
        return True
    return False


def restore_state(cfg, modules, source) -> tuple[int, dict, str, str | None]:
    """Resume: (iteration, counters, where it started - for the banner -, checkpoint path or None).

    A difference from the checkpoint's config is refused unless checkpoint.allow_changes names it,
    and an allowed one gets its meaning after the load (resume_policy.py)."""
    counters = {"skipped_steps": 0, "consumed_samples": 0}
    path, weights_only = resume_source(cfg)
    if not path:
        return 0, counters, "fresh", None
    plan = ResumePlan() if weights_only else resume_plan(read_run_config(path), cfg, path)
    fresh_data = source.state_dict()
    restored = load_checkpoint(path, modules, source, finetune=weights_only)
    apply_resume_plan(plan, cfg, modules, source, fresh_data)
    iteration = restored.pop("iteration", 0)
    counters.update(restored)
    start = (f"{path} at step {iteration}" + (" (weights only)" if weights_only else "")
             + (f", with {'; '.join(plan.describe())}" if plan.changes else ""))
    return iteration, counters, start, path


def run_training(cfg, batch_source=None) -> TrainOutcome:
    """Train until schedule.train_iters (or a stop); parallel state must already be initialised."""
    resolve_run_inputs(cfg)  # idempotent: train() did it already; pooled tests call this directly
    rank, world = dist.get_rank(), dist.get_world_size()
    device = device_lib.current_device()
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    if cfg.checkpoint.dir:  # a read-only or missing run folder fails now, not at the first save
        check_writable(cfg.checkpoint.dir)
    source = batch_source or build_batch_source(cfg, dp_rank, dp_size)
    modules = build_training_modules(cfg)
    micro_per_step = modules.split.micro_batches
    iteration, counters, start, path = restore_state(cfg, modules, source)
    params = parameter_count([chunk.module for chunk in modules.model])
    if rank == 0:
        for line in banner_lines(cfg, params, world, micro_per_step, start):
            log.info(line)
        if path:  # one line to grep for in a requeued job's log
            log.info("resumed from %s", start)

    run_dir, total = cfg.checkpoint.dir, cfg.schedule.train_iters
    if iteration >= total and rank == 0:
        log.warning("nothing to train: %s is step %d and schedule.train_iters=%d, so this run is complete. To "
                    "train longer, raise schedule.train_iters and name it: "
                    "checkpoint.allow_changes=[schedule.train_iters]", path, iteration, total)
    peak = mfu_peak_tflops(cfg.train.device, cfg.train.precision)
    signals = faults.StopSignals().install()
    watchdog = faults.Watchdog(cfg.train.step_timeout_s)
    guard = faults.NonFiniteGuard(cfg.train.max_consecutive_nan_steps)
    logger = MetricsLogger(cfg, enabled=rank == 0, start_step=iteration)
    held_out = (HeldOutLoss(cfg, dp_rank, dp_size, micro_per_step)
                if cfg.data.eval_manifest and cfg.train.eval_iters > 0 else None)
    async_queue = None
    if cfg.checkpoint.async_save:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        async_queue = AsyncCallsQueue()
    outcome = TrainOutcome(faults.EXIT_DONE, iteration, skipped_steps=counters["skipped_steps"])
    try:
        while iteration < total:
            watchdog.step_started(iteration + 1)
            start = time.perf_counter()
            micro_batches = [source.next() for _ in range(micro_per_step)]
            seconds = {"loader": time.perf_counter() - start}
            save_requested = _save_requested_by_file(cfg)
            result = train_step(modules, micro_batches, device, signals.requested, save_requested)
            seconds.update(result.seconds)
            outcome.step_seconds.append(seconds)
            outcome.step_work.append((result.samples, result.tokens))
            outcome.step_flops.append(result.flops)
            iteration += 1
            counters["skipped_steps"] += int(result.skipped)
            counters["consumed_samples"] += result.samples
            outcome.losses[iteration] = result.loss
            step_seconds = time.perf_counter() - start

            start = time.perf_counter()
            metrics = dict(loss=result.loss, lr=current_lr(modules.optimizer), grad_norm=result.grad_norm,
                           skipped=int(result.skipped), skipped_steps=counters["skipped_steps"],
                           samples=result.samples, tokens=result.tokens, flops=result.flops,
                           seconds_per_step=step_seconds, consumed_samples=counters["consumed_samples"],
                           peak_memory_bytes=device_lib.peak_memory_bytes(),
                           **throughput(result.samples, result.tokens, result.flops, step_seconds, world, peak))
            logger.step(iteration, metrics)
            if async_queue is not None:
                async_queue.maybe_finalize_async_calls(blocking=False)
            seconds["logging"] = time.perf_counter() - start

            if guard.update(iteration, result.skipped):
                outcome.exit_code, outcome.message = faults.EXIT_NONFINITE, guard.message(
                    iteration, read_latest(run_dir) if run_dir else None)
                break
            if run_dir and (result.stop_requested or result.save_requested
                            or iteration % cfg.checkpoint.save_interval == 0 or iteration == total):
                start = time.perf_counter()
                with gathered_params(modules.model, cfg.parallel.overlap_param_gather):
                    save_checkpoint(run_dir, iteration, modules, source, counters, cfg, async_queue)
                seconds["checkpoint"] = time.perf_counter() - start
            watchdog.step_finished()
            if held_out is not None and not result.stop_requested and held_out.due(iteration):
                watchdog.step_started(iteration)  # an evaluation that hangs is caught like a step
                with gathered_params(modules.model, cfg.parallel.overlap_param_gather):
                    evaluation = held_out.evaluate(modules, device)
                watchdog.step_finished()
                outcome.eval_losses[iteration] = evaluation["loss"]
                logger.evaluation(iteration, evaluation)
            if result.stop_requested:
                outcome.exit_code = faults.EXIT_REQUEUE
                outcome.message = (f"stop signal received: finished step {iteration}, "
                                   + (f"saved it under {run_dir}" if run_dir else "no checkpoint.dir to save to")
                                   + f"; exit code {faults.EXIT_REQUEUE} asks the scheduler to requeue")
                break
    finally:
        watchdog.close()
        signals.uninstall()
        if async_queue is not None:
            async_queue.maybe_finalize_async_calls(blocking=True)
            async_queue.close()
    if outcome.message and rank == 0:
        (log.error if outcome.exit_code == faults.EXIT_NONFINITE else log.warning)(outcome.message)
    if outcome.exit_code == faults.EXIT_DONE and outcome.losses and iteration == total and end_of_run.wanted(cfg):
        if rank == 0:  # one process reads the checkpoint just saved; the others wait for it
            logger.end_of_run(iteration, end_of_run.end_of_run_evaluation(cfg, run_dir))
        dist.barrier()
    logger.close()
    outcome.iteration, outcome.skipped_steps = iteration, counters["skipped_steps"]
    outcome.seconds = dict(sum((Counter(step) for step in outcome.step_seconds), Counter()))
    return outcome


def train(cfg, rank: int, world_size: int, master_addr: str, master_port: int,
          local_rank: int | None = None) -> int:
    """Validate, join the world, train, tear down; return the process exit code (faults.py)."""
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed

    resolve_run_inputs(cfg)  # absolute dataset names, vocabulary from the tokenizer: before start-up costs
    check(cfg, world_size)
    p = cfg.parallel
    init_distributed(rank, world_size, master_addr, master_port, device=cfg.train.device,
                     tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                     vpp=p.virtual_pipeline_model_parallel_size, cp=p.context_parallel_size,
                     seed=cfg.train.seed, local_rank=local_rank, timeout_s=cfg.train.step_timeout_s)
    try:
        return run_training(cfg).exit_code
    finally:
        destroy_distributed()
