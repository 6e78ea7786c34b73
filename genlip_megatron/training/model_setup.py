"""Build what a training step needs from the config: model chunks in DDP, optimizer, lr schedule.

Assumes megatron's parallel state is initialised (runtime/distributed.py). One model chunk per
virtual pipeline stage of this rank (one chunk without VPP), built by the objective's spec
(objectives/); each is wrapped in megatron-core's DistributedDataParallel, whose contiguous grad
buffers feed the (distributed) optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.objectives import registry


@dataclass
class TrainingModules:
    model: list  # DDP-wrapped model chunks, one per virtual pipeline stage
    optimizer: object  # megatron MegatronOptimizer (distributed or not)
    scheduler: OptimizerParamScheduler
    transformer_config: object
    padded_vocab: int
    cfg: object  # the run's Config
    objective: object  # its ObjectiveSpec (objectives/registry.py): step preparation, forward, FLOPs
    split: StepSplit  # how a step's global batch splits over this run's data-parallel ranks


def build_model_chunks(cfg, transformer_config) -> list:
    """This rank's pipeline stages: [chunk for vp_stage in range(vpp)] (one chunk without VPP)."""
    spec = registry.spec_for(cfg)
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunks.append(spec.build_stage(
            cfg, transformer_config,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            vp_stage=stage))
    return chunks


def wrap_ddp(cfg, chunks: list, transformer_config) -> list[DistributedDataParallel]:
    p = cfg.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,  # bf16 grads are summed over DP in fp32 (exactness at any DP size)
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=p.use_distributed_optimizer,
        check_for_nan_in_grad=False,  # non-finite steps are skipped by the trainer, not raised
    )
    device = torch.cuda.current_device() if cfg.train.device == "cuda" else "cpu"
    # megatron builds its own layers in params_dtype; plain torch submodules (LayerScale, proj) are
    # created in fp32, so cast the whole chunk (what Megatron-LM's Float16Module does).
    dtype = transformer_config.params_dtype
    wrapped = []
    for index, chunk in enumerate(chunks):
        chunk.to(device=device, dtype=dtype)
        # Like Megatron-LM: only the first chunk buckets, later chunks reduce in one go, which
        # keeps the overlap schedule simple under interleaving.
        wrapped.append(DistributedDataParallel(transformer_config, ddp_config, chunk,
                                               disable_bucketing=index > 0))
    return wrapped


def _wire_schedule_hooks(cfg, transformer_config, model: list) -> None:
    """Tell megatron's pipeline schedules how to sync grads of these chunks."""
    if cfg.parallel.overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in model]
        grad_sync = [chunk.start_grad_sync for chunk in model]
        transformer_config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
        transformer_config.grad_sync_func = grad_sync[0] if len(model) == 1 else grad_sync
    transformer_config.finalize_model_grads_func = finalize_model_grads


def build_optimizer(cfg, model: list):
    o, t = cfg.optimizer, cfg.train
    config = OptimizerConfig(
        optimizer="adam",  # decoupled_weight_decay=True (default) makes this torch AdamW
        lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=t.precision in ("bf16", "fp8"),
        params_dtype=torch.bfloat16 if t.precision in ("bf16", "fp8") else torch.float32,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
    )
    optimizer = get_megatron_optimizer(config, model, config_overrides=decay_overrides(o.decay_params))
    use_fused_torch_adam(optimizer)
    return optimizer


def use_fused_torch_adam(optimizer) -> None:
    """Step megatron-core's torch AdamW fallback (no TE, no apex) with torch's fused kernel.

    Without TE or apex, megatron-core builds a plain `torch.optim.AdamW`, which on CPU defaults to
    its per-tensor loop: about ten small ops per parameter tensor, each dispatched from Python. The
    fused kernel updates every tensor of a group in one call (the same update rule; in a tiny CPU
    step the AdamW update took 2.9 ms instead of 10.7, docs/cpu_speed.md). TE's and apex's FusedAdam
    are fused already and are left alone.
    """
    inners = [getattr(chained, "optimizer", None) for chained in getattr(optimizer, "chained_optimizers", [optimizer])]
    for inner in inners:
        if type(inner) not in (torch.optim.Adam, torch.optim.AdamW):
            continue
        params = [p for group in inner.param_groups for p in group["params"]]
        if any(not p.is_floating_point() for p in params):
            continue
        inner.defaults.update(fused=True, foreach=False)
        for group in inner.param_groups:
            group.update(fused=True, foreach=False)


def decay_overrides(decay_params: str) -> dict | None:
    """megatron-core's per-parameter group overrides for `optimizer.decay_params`.

    NOTE: megatron-core reads `config_overrides=None` as its standard rule (weight-decay multiplier 0
    for biases and every 1-D tensor); an EMPTY dict overrides nothing, so every parameter decays
    with optimizer.weight_decay, as the official GenLIP recipe does.
    """
    if decay_params == "all":
        return {}
    if decay_params == "megatron":
        return None
    raise ValueError(f"optimizer.decay_params: {decay_params!r} is not one of all, megatron")


def build_scheduler(cfg, optimizer) -> OptimizerParamScheduler:
    """Linear warmup over warmup_fraction x train_iters from 0, then cosine (or linear) to min_lr."""
    s, o = cfg.schedule, cfg.optimizer
    warmup = round(s.warmup_fraction * s.train_iters)
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=s.train_iters, lr_decay_style=s.decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=s.train_iters,
        wd_incr_style="constant",
        # The checkpoint's schedule wins over the config on resume (the run continues as planned).
        use_checkpoint_opt_param_scheduler=True, override_opt_param_scheduler=False)


def build_training_modules(cfg) -> TrainingModules:
    spec = registry.spec_for(cfg)
    transformer_config = spec.transformer_config(cfg)
    chunks = build_model_chunks(cfg, transformer_config)
    model = wrap_ddp(cfg, chunks, transformer_config)
    _wire_schedule_hooks(cfg, transformer_config, model)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    return TrainingModules(model, optimizer, scheduler, transformer_config,
                           padded_vocab_size(cfg.model, cfg.parallel.tensor_model_parallel_size), cfg, spec,
                           StepSplit.of(cfg, parallel_state.get_data_parallel_world_size()))
