"""megatron's DistributedOptimizer on CPU: one step equals torch AdamW, and a fully_reshardable
dist_checkpointing save/load resumes the run exactly (Adam's step counter does not jump)."""

import contextlib

import pytest
import torch
from multiproc import RankError, run_on_ranks
from tiny_gpt import (
    CLIP_GRAD,
    LR,
    build_model,
    build_optimizer,
    load_reference_weights,
    parallel_step,
    reference_step,
    tiny_config,
    wrap_ddp,
)

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


def _model_and_optimizer(weights):
    model = build_model(tiny_config())
    load_reference_weights(model, weights)
    ddp_model = wrap_ddp(model, use_distributed_optimizer=True)
    return ddp_model, build_optimizer(ddp_model)


def _adam_steps(optimizer) -> set[float]:
    return {state["step"].item() for state in optimizer.optimizer.state.values()}


def _weights(ddp_model):
    return {name: p.detach().clone() for name, p in ddp_model.module.named_parameters()}


def _one_step(weights):
    ddp_model, optimizer = _model_and_optimizer(weights)
    parallel_step(ddp_model)
    assert optimizer.step()[0], "the optimizer skipped its step"
    return _weights(ddp_model)


def _one_step_clip_lifted(weights):
    from genlip_megatron.runtime.cpu_adaptations import without_cpu_adaptation

    ddp_model, optimizer = _model_and_optimizer(weights)
    parallel_step(ddp_model)
    with without_cpu_adaptation("cpu_float_params_accepted"):
        optimizer.step()


def _build_without_type_adaptation(weights):
    from genlip_megatron.runtime.cpu_adaptations import without_cpu_adaptation

    with without_cpu_adaptation("cpu_float_params_accepted"):
        _model_and_optimizer(weights)


def _save_then_resume(weights, checkpoint_dir, lift_load_adaptation=False):
    """Step, save, step again; a fresh model+optimizer loads the save and takes the same step."""
    from megatron.core import dist_checkpointing

    from genlip_megatron.runtime.cpu_adaptations import without_cpu_adaptation

    def sharded(ddp_model, optimizer, is_loading):
        model_state = ddp_model.module.sharded_state_dict()  # unwrapped: no "module." prefix
        return {
            "model": model_state,
            # A fresh dict: megatron-core caches the data-parallel group in it.
            "optimizer": optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=dict(SHARDING)),
        }

    ddp_model, optimizer = _model_and_optimizer(weights)
    parallel_step(ddp_model, seed=0)
    optimizer.step()
    dist_checkpointing.save(sharded(ddp_model, optimizer, is_loading=False), checkpoint_dir)
    parallel_step(ddp_model, seed=1)
    optimizer.step()

    perturbed = {name: value + 1.0 for name, value in weights.items()}  # loading must overwrite these
    resumed_model, resumed_optimizer = _model_and_optimizer(perturbed)
    lifted = without_cpu_adaptation("distributed_optimizer_torch_adam_load")
    with lifted if lift_load_adaptation else contextlib.nullcontext():
        loaded = dist_checkpointing.load(
            sharded(resumed_model, resumed_optimizer, is_loading=True), checkpoint_dir
        )
        resumed_model.module.load_state_dict(loaded["model"])
        resumed_optimizer.load_state_dict(loaded["optimizer"])
    parallel_step(resumed_model, seed=1)
    resumed_optimizer.step()
    return (
        _weights(ddp_model),
        _weights(resumed_model),
        _adam_steps(optimizer),
        _adam_steps(resumed_optimizer),
    )


@pytest.fixture(scope="module")
def reference():
    return run_on_ranks(2, reference_step)[0]


def test_distributed_optimizer_step_with_clipping_equals_torch_adamw(reference):
    params = {name: w.clone().requires_grad_(True) for name, w in reference["weights"].items()}
    for name, param in params.items():
        param.grad = reference["grads"][name].clone()
    torch.nn.utils.clip_grad_norm_(params.values(), CLIP_GRAD)
    torch.optim.AdamW(params.values(), lr=LR, weight_decay=0.0).step()

    for rank_weights in run_on_ranks(2, _one_step, reference["weights"]):  # TP1 x DP2
        for name, param in params.items():
            torch.testing.assert_close(rank_weights[name], param.detach(), rtol=0, atol=1e-6)


def test_without_type_adaptation_optimizer_and_clip_grads_reject_cpu_params(reference):
    with pytest.raises(RankError, match="Wrapped parameters must be one of"):
        run_on_ranks(2, _build_without_type_adaptation, reference["weights"])
    with pytest.raises(RankError, match="clip_grads"):
        run_on_ranks(2, _one_step_clip_lifted, reference["weights"])


def test_fully_reshardable_checkpoint_resumes_exactly(reference, tmp_path):
    results = run_on_ranks(2, _save_then_resume, reference["weights"], str(tmp_path))
    for continuous, resumed, steps, resumed_steps in results:
        assert steps == {2.0} and resumed_steps == {2.0}
        for name, value in continuous.items():
            torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-7)


def test_without_load_adaptation_a_fresh_optimizer_cannot_load(reference, tmp_path):
    with pytest.raises(RankError, match="assert len\\(steps\\) == 1"):
        run_on_ranks(2, _save_then_resume, reference["weights"], str(tmp_path), True)
