"""TP2, TP2+SP and PP2 forward/backward on CPU equal the single-process TP1 step (within 1e-5)."""

import pytest
from multiproc import run_on_ranks
from tiny_gpt import (
    build_model,
    load_reference_weights,
    max_grad_error,
    parallel_step,
    reference_step,
    tiny_config,
    wrap_ddp,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    results = run_on_ranks(2, reference_step)  # tp=pp=1: each rank computes it alone
    assert results[0]["loss"] == results[1]["loss"]
    return results[0]


def _parallel_loss_and_grad_error(reference, tp, pp, sequence_parallel=False):
    model = build_model(tiny_config(tp=tp, pp=pp, sequence_parallel=sequence_parallel))
    load_reference_weights(model, reference["weights"])
    ddp_model = wrap_ddp(model)
    loss = parallel_step(ddp_model)
    return loss, max_grad_error(ddp_model, reference["grads"])


@pytest.mark.parametrize(
    "tp, pp, sequence_parallel", [(2, 1, False), (2, 1, True), (1, 2, False)], ids=["tp2", "tp2-sp", "pp2"]
)
def test_parallel_step_matches_single_process_reference(reference, tp, pp, sequence_parallel):
    results = run_on_ranks(
        2, _parallel_loss_and_grad_error, reference, tp, pp, sequence_parallel, tp=tp, pp=pp
    )
    losses = [loss for loss, _ in results if loss is not None]  # only the last PP stage has one
    assert losses and all(abs(loss - reference["loss"]) < TOLERANCE for loss in losses)
    assert all(grad_error < TOLERANCE for _, grad_error in results), results
