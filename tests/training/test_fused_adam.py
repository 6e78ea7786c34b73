"""megatron-core's torch-AdamW fallback (no TE, no apex) steps with torch's fused kernel
(training/model_setup.use_fused_torch_adam), and that is the same update as the per-tensor loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from multiproc import run_on_ranks
from recipe_runs import fused_flags

from genlip_megatron.training.model_setup import use_fused_torch_adam


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((7, 5), (5,), (3, 4, 2))]


def test_fused_steps_equal_the_per_tensor_loop():
    loop, fused = _params(0), _params(0)
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    reference = torch.optim.AdamW(loop, **kwargs)
    wrapped = SimpleNamespace(optimizer=torch.optim.AdamW(fused, **kwargs))  # as megatron holds it
    use_fused_torch_adam(wrapped)
    assert all(group["fused"] and not group["foreach"] for group in wrapped.optimizer.param_groups)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(loop, fused):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        reference.step()
        wrapped.optimizer.step()
    for a, b in zip(loop, fused):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_other_optimizers_are_left_alone():
    sgd = SimpleNamespace(optimizer=torch.optim.SGD(_params(0), lr=0.1))
    use_fused_torch_adam(sgd)
    assert sgd.optimizer.param_groups[0]["fused"] is None


@pytest.mark.parametrize("distributed", ["true", "false"])
def test_the_built_optimizer_uses_the_fused_kernel(distributed):
    flags = run_on_ranks(1, fused_flags, [f"parallel.use_distributed_optimizer={distributed}"], timeout=300)[0]
    assert flags and all(flags)
