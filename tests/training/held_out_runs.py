"""Rank-side helper of the held-out tests: a checkpoint's held-out loss as the training loop computes it."""

from __future__ import annotations


def held_out_after_load(overrides: list[str]) -> dict:
    """Build the run of `overrides` (checkpoint.load + finetune), load its weights as run_training does,
    and evaluate data.eval_manifest once with the loop's HeldOutLoss."""
    from megatron.core import parallel_state
    from tiny_runs import tiny_config

    from genlip_megatron.config.step_split import StepSplit
    from genlip_megatron.runtime import device as device_lib
    from genlip_megatron.training.batches import build_batch_source
    from genlip_megatron.training.held_out import HeldOutLoss
    from genlip_megatron.training.model_setup import build_training_modules
    from genlip_megatron.training.run_inputs import resolve_run_inputs
    from genlip_megatron.training.trainer import restore_state

    cfg = resolve_run_inputs(tiny_config(overrides))
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    source = build_batch_source(cfg, dp_rank, dp_size)
    modules = build_training_modules(cfg)
    restore_state(cfg, modules, source)
    held_out = HeldOutLoss(cfg, dp_rank, dp_size, StepSplit.of(cfg, dp_size).micro_batches)
    return held_out.evaluate(modules, device_lib.current_device())
