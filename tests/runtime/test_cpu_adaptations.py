"""Each CPU adaptation is needed: with it lifted the megatron call fails; with it, the result is right.

(The optimizer ones, type checks and the distributed-optimizer load path, are in
test_distributed_optimizer.py; TP/SP/PP numerical equivalence is in test_parallel_equivalence.py.)
"""

import pytest
import torch
from multiproc import RankError, run_on_ranks
from tiny_gpt import (
    build_model,
    load_reference_weights,
    max_grad_error,
    parallel_step,
    reference_step,
    tiny_config,
    wrap_ddp,
)

NO_DRIVER = "NVIDIA driver|CUDA"
needs_cpu_only_torch = pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU present the un-adapted CUDA calls succeed"
)


def _lifted(name):
    from genlip_megatron.runtime.cpu_adaptations import without_cpu_adaptation

    return without_cpu_adaptation(name)


def _seed_with_rng_adaptation_lifted():
    from megatron.core import tensor_parallel

    with _lifted("rng_streams_on_cpu_generator"):
        tensor_parallel.model_parallel_cuda_manual_seed(7, force_reset_rng=True)


def _draw_default_and_model_parallel_streams(seed):
    from megatron.core import parallel_state, tensor_parallel

    from genlip_megatron.runtime.distributed import seed_everything

    seed_everything(seed)
    before = torch.rand(3)
    with tensor_parallel.get_cuda_rng_tracker().fork():  # the model-parallel stream
        model_parallel = torch.rand(3)
    after = torch.rand(3)
    return parallel_state.get_tensor_model_parallel_rank(), torch.cat([before, after]), model_parallel


@needs_cpu_only_torch
def test_without_rng_adaptation_seeding_megatron_streams_fails():
    with pytest.raises(RankError, match=NO_DRIVER):
        run_on_ranks(2, _seed_with_rng_adaptation_lifted, tp=2)


def test_rng_streams_live_on_the_cpu_generator_with_megatron_seeds():
    seed = 11
    for tp_rank, default, model_parallel in run_on_ranks(
        2, _draw_default_and_model_parallel_streams, seed, tp=2
    ):
        # The default stream is the plain seed and is untouched by the fork in between.
        torch.testing.assert_close(default, torch.rand(6, generator=torch.Generator().manual_seed(seed)))
        # The model-parallel stream is megatron's documented seed + 2718 + tp_rank.
        expected = torch.rand(3, generator=torch.Generator().manual_seed(seed + 2718 + tp_rank))
        torch.testing.assert_close(model_parallel, expected)


def _build_with_lifted(name, tp, sequence_parallel=False):
    with _lifted(name):
        build_model(tiny_config(tp=tp, sequence_parallel=sequence_parallel))


@needs_cpu_only_torch
def test_without_device_call_adaptation_building_a_tp_model_fails():
    with pytest.raises(RankError, match=NO_DRIVER):
        run_on_ranks(2, _build_with_lifted, "cuda_device_calls_on_cpu", 2, tp=2)


def _step_with_literal_factories_lifted():
    ddp_model = wrap_ddp(build_model(tiny_config()))
    with _lifted("cuda_literal_factories_on_cpu"):
        parallel_step(ddp_model)


def _default_causal_mask(lifted):
    from megatron.core.transformer.utils import get_default_causal_mask

    if lifted:
        with _lifted("cuda_literal_factories_on_cpu"):
            return get_default_causal_mask(4)
    return get_default_causal_mask(4)


@needs_cpu_only_torch
def test_without_literal_factory_adaptation_the_schedule_and_causal_mask_fail():
    with pytest.raises(RankError, match=NO_DRIVER):
        run_on_ranks(2, _step_with_literal_factories_lifted)
    with pytest.raises(RankError, match=NO_DRIVER):
        run_on_ranks(2, _default_causal_mask, True)
    expected = torch.ones(4, 4).triu(diagonal=1).bool()
    assert all(torch.equal(mask, expected) for mask in run_on_ranks(2, _default_causal_mask, False))


def test_without_norm_adaptation_sequence_parallel_layers_cannot_be_built():
    with pytest.raises(RankError, match="sequence parallel not supported by torch LayerNorm"):
        run_on_ranks(2, _build_with_lifted, "sequence_parallel_torch_norm", 2, True, tp=2)


def _sp_grad_error_with_norm_marks(reference, keep_marks):
    model = build_model(tiny_config(tp=2, sequence_parallel=True))
    load_reference_weights(model, reference["weights"])
    for name, param in model.named_parameters():
        if "norm" in name and not keep_marks:
            param.sequence_parallel = False
    ddp_model = wrap_ddp(model)
    parallel_step(ddp_model)
    return max_grad_error(ddp_model, reference["grads"])


def test_sequence_parallel_norm_grads_are_right_only_because_params_are_marked():
    reference = run_on_ranks(2, reference_step)[0]
    marked = run_on_ranks(2, _sp_grad_error_with_norm_marks, reference, True, tp=2)
    unmarked = run_on_ranks(2, _sp_grad_error_with_norm_marks, reference, False, tp=2)
    assert max(marked) < 1e-5
    assert min(unmarked) > 1e-4  # each TP rank saw only half the sequence


def _check_version_pretending(version):
    from megatron.core import package_info

    from genlip_megatron.runtime.cpu_adaptations import check_mcore_version

    real = package_info.VERSION
    package_info.VERSION = version
    try:
        check_mcore_version()
    finally:
        package_info.VERSION = real


def test_an_untested_megatron_core_version_is_refused_with_a_clear_message():
    run_on_ranks(2, _check_version_pretending, (0, 16, 9, ""))
    with pytest.raises(RankError, match="written against megatron-core 0.16.x"):
        run_on_ranks(2, _check_version_pretending, (0, 17, 0, ""))
