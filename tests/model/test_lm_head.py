"""The head on loss positions (model/lm_head.py) equals the head on every position: loss and every
parameter gradient within 1e-6 (fp32), for GenLIP at TP1, TP2+SP, PP2 and PP2+VPP2 and for AIMv2's
text head at TP1, TP2+SP and PP2, through megatron-core's schedules, DDP and finalize_model_grads.
The head alone is also checked under TP and TP+SP on masks that leave one SP slice without any loss
position, or with none at all."""

import aimv2_parity
import parallel_parity
import pytest
import torch
from lm_head_ranks import head_losses_and_grads
from multiproc import run_on_ranks

TOLERANCE = 1e-6

GENLIP_LAYOUTS = {  # name: (world, tp, pp, vpp, sp)
    "tp1": (1, 1, 1, None, False),
    "tp2_sp": (2, 2, 1, None, True),
    "pp2": (2, 1, 2, None, False),
    "pp2_vpp2": (2, 1, 2, 2, False),
}
AIMV2_LAYOUTS = {"tp1": (1, 1, 1, False), "tp2_sp": (2, 2, 1, True), "pp2": (2, 1, 2, False)}


def _merge(results):
    return [x for x, _ in results if x is not None], {k: v for _, g in results for k, v in g.items()}


def _assert_same(new, old):
    (new_losses, new_grads), (old_losses, old_grads) = _merge(new), _merge(old)
    assert new_losses and len(new_losses) == len(old_losses)
    for a, b in zip(new_losses, old_losses):
        assert abs(a - b) <= TOLERANCE, (new_losses, old_losses)
    assert set(new_grads) == set(old_grads) and new_grads
    for key, ref in old_grads.items():
        diff = (new_grads[key] - ref).abs().max().item()
        assert diff <= TOLERANCE, f"{key}: max |grad diff| {diff:.2e}"


@pytest.mark.parametrize("name", list(GENLIP_LAYOUTS))
def test_genlip_loss_and_every_gradient_equal_the_full_head(name):
    world, tp, pp, vpp, sp = GENLIP_LAYOUTS[name]
    layout = dict(tp=tp, pp=pp, vpp=vpp, sp=sp, attention="fused")
    runs = [run_on_ranks(world, parallel_parity.parallel_loss_and_grads, layout, head, tp=tp, pp=pp, vpp=vpp,
                         timeout=600)
            for head in ("loss_positions", "full")]
    _assert_same(*runs)


@pytest.mark.parametrize("name", list(AIMV2_LAYOUTS))
def test_aimv2_loss_and_every_gradient_equal_the_full_text_head(name):
    world, tp, pp, sp = AIMV2_LAYOUTS[name]
    layout = {"tp": tp, "pp": pp, "sp": sp}
    runs = [run_on_ranks(world, aimv2_parity.parallel_loss_and_grads, layout, head, tp=tp, pp=pp, timeout=600)
            for head in ("loss_positions", "full")]
    _assert_same(*runs)


# Rows the head computes on one rank: the loss positions (no SP), or TP x the largest per-slice
# count (SP: slices are padded to equal size for the all-gather); at least 1 row. The full head: S x B.
HEAD_ROWS = {("first_half", False): 3, ("first_half", True): 2 * 3, ("spread", False): 5,
             ("spread", True): 2 * 3, ("none", False): 0, ("none", True): 2 * 1}


@pytest.mark.parametrize("sequence_parallel", [False, True])
@pytest.mark.parametrize("pattern", ["first_half", "spread", "none"])
def test_head_alone_matches_when_a_tensor_parallel_slice_holds_no_loss_position(sequence_parallel, pattern):
    for rank_result in run_on_ranks(2, head_losses_and_grads, sequence_parallel, pattern, tp=2, timeout=600):
        (loss, d_hidden, d_weight, rows), (ref_loss, ref_hidden, ref_weight, ref_rows) = (
            rank_result["loss_positions"], rank_result["full"])
        assert rows == HEAD_ROWS[pattern, sequence_parallel] and ref_rows == 8  # the full head: all S = 8 positions (x B = 2)
        torch.testing.assert_close(loss, ref_loss, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(d_hidden, ref_hidden, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(d_weight, ref_weight, atol=TOLERANCE, rtol=0)
        if pattern != "none":
            assert ref_weight.abs().max() > 0 and ref_hidden.abs().max() > 0  # not vacuous
