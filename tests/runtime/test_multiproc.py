"""The pooled harness: results come back by rank, rank errors surface with their traceback."""

import pytest
import torch
import torch.distributed as dist
from multiproc import RankError, run_on_ranks


def _rank_and_world_sum():
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    return dist.get_rank(), value.item()


def _tp_rank():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_data_parallel_rank()


def _raise_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("boom from rank one")
    return "ok"


def test_results_come_back_in_rank_order_after_a_real_collective():
    assert run_on_ranks(2, _rank_and_world_sum) == [(0, 3.0), (1, 3.0)]


def test_layout_is_re_initialised_between_calls():
    assert run_on_ranks(2, _tp_rank, tp=2) == [(0, 0), (1, 0)]
    assert run_on_ranks(2, _tp_rank, tp=1) == [(0, 0), (0, 1)]


def test_an_exception_in_one_rank_is_raised_with_its_traceback_and_the_pool_recovers():
    with pytest.raises(RankError, match="boom from rank one") as error:
        run_on_ranks(2, _raise_on_rank_one)
    assert list(error.value.failures) == [1]
    assert "_raise_on_rank_one" in error.value.failures[1]
    assert run_on_ranks(2, _rank_and_world_sum) == [(0, 3.0), (1, 3.0)]
