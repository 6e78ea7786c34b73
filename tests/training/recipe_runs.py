"""Rank-side code of the recipe tests (drop path per layer, weight-decay groups, init): pool workers."""

from __future__ import annotations

from tiny_runs import tiny_config


def drop_path_rates(overrides: list[str]) -> list[tuple[int, float]]:
    """(global layer number, drop-path rate) of every layer this rank builds."""
    from genlip_megatron.model.transformer_config import genlip_transformer_config
    from genlip_megatron.training.model_setup import build_model_chunks

    cfg = tiny_config(overrides)
    chunks = build_model_chunks(cfg, genlip_transformer_config(cfg))
    return [(layer.layer_number, layer.drop_path_rate) for chunk in chunks for layer in chunk.decoder.layers]


def decay_groups(overrides: list[str]) -> dict[str, float]:
    """Parameter name -> the weight decay of the optimizer group holding it (plain megatron optimizer,
    so the groups hold the model's own parameters)."""
    from genlip_megatron.training.model_setup import build_training_modules

    cfg = tiny_config(["parallel.use_distributed_optimizer=false", *overrides])
    modules = build_training_modules(cfg)
    names = {id(p): name for chunk in modules.model for name, p in chunk.module.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in modules.optimizer.param_groups
            for p in group["params"]}


def decay_step(overrides: list[str]) -> dict[str, float]:
    """One distributed-optimizer step with all gradients zero: AdamW then moves a parameter only by
    its decoupled decay, p -> p * (1 - lr * wd). Returns name -> mean of (p_after / p_before) over
    the nonzero entries of every parameter that has some."""
    from genlip_megatron.training.model_setup import build_training_modules

    cfg = tiny_config(overrides)
    modules = build_training_modules(cfg)
    params = {name: p for chunk in modules.model for name, p in chunk.module.named_parameters()}
    before = {name: p.detach().clone() for name, p in params.items()}
    for chunk in modules.model:
        chunk.zero_grad_buffer()
    modules.optimizer.step()
    ratios = {}
    for name, p in params.items():
        nonzero = before[name] != 0  # zero-initialised tensors (biases) say nothing about decay
        if nonzero.any():
            ratios[name] = (p.detach()[nonzero] / before[name][nonzero]).mean().item()
    return ratios


def initial_weights(overrides: list[str]) -> dict | None:
    """The freshly initialised model, gathered over TP, as {global megatron name: full tensor}, from the
    TP-rank-0 ranks (each holds its pipeline stage); None elsewhere."""
    from megatron.core import parallel_state

    from genlip_megatron.convert.mcore_names import gather_tp_slices, global_name
    from genlip_megatron.model.transformer_config import genlip_transformer_config
    from genlip_megatron.training.model_setup import build_model_chunks

    cfg = tiny_config(overrides)
    chunks = build_model_chunks(cfg, genlip_transformer_config(cfg))
    group = parallel_state.get_tensor_model_parallel_group()
    full = {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            full[global_name(name, chunk)] = gather_tp_slices(name, param.detach(), param, group).clone()
    return full if parallel_state.get_tensor_model_parallel_rank() == 0 else None


def fused_flags(overrides: list[str]) -> list[bool]:
    """`fused` of every param group of the torch AdamW inside the built megatron optimizer."""
    from genlip_megatron.training.model_setup import build_training_modules

    optimizer = build_training_modules(tiny_config(overrides)).optimizer
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [bool(group["fused"]) for each in chained for group in each.optimizer.param_groups]
