"""Rank-side helpers of the resume tests: the optimizer as a resumed run would start its next step."""

from __future__ import annotations


def optimizer_after_resume(overrides: list[str]) -> dict:
    """Build the run of `overrides`, restore it as run_training does, report the optimizer's settings."""
    from megatron.core import parallel_state
    from tiny_runs import tiny_config

    from genlip_megatron.training.batches import build_batch_source
    from genlip_megatron.training.model_setup import build_training_modules
    from genlip_megatron.training.run_inputs import resolve_run_inputs
    from genlip_megatron.training.trainer import restore_state

    cfg = resolve_run_inputs(tiny_config(overrides))
    source = build_batch_source(cfg, parallel_state.get_data_parallel_rank(),
                                parallel_state.get_data_parallel_world_size())
    modules = build_training_modules(cfg)
    iteration, _, start, _ = restore_state(cfg, modules, source)
    groups = [{k: group[k] for k in ("lr", "max_lr", "min_lr", "betas", "eps", "weight_decay", "wd_mult")}
              for group in modules.optimizer.param_groups]
    return {"iteration": iteration, "start": start, "groups": groups,
            "clip_grad": modules.optimizer.config.clip_grad, "num_steps": modules.scheduler.num_steps}
