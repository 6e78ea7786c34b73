"""Context parallelism: GenLIP's loss and every parameter gradient at CP2 (also under full recompute),
CP2 x TP2+SP, CP2 x PP2, CP2 x PP2 x VPP2 and CP2 x DP2 equal the single-process reference (= TP1)
within 1e-5 (fp32, fused attention), on packs of samples of different lengths in which one sample
(28 tokens) is longer than a CP part (24 tokens) and samples cross chunk and rank boundaries; the
same through megatron-core's schedules, DDP over the data-and-context-parallel group and
finalize_model_grads."""

import pytest
from multiproc import run_on_ranks
from parallel_parity import SEQ, parallel_loss_and_grads, reference_loss_and_grads

TOLERANCE = 1e-5

LAYOUTS = {  # name: (world, tp, pp, cp, sp, chunks per CP rank, extra layout settings)
    "cp2": (2, 1, 1, 2, False, 3, {}),
    "cp2_one_chunk": (2, 1, 1, 2, False, 1, {}),
    "cp2_full_recompute": (2, 1, 1, 2, False, 3, {"recompute": "full"}),
    "cp2_tp2_sp": (4, 2, 1, 2, True, 3, {}),
    "cp2_pp2": (4, 1, 2, 2, False, 2, {}),
    "cp2_pp2_vpp2": (4, 1, 2, 2, False, 2, {"vpp": 2}),
    "cp2_dp2": (4, 1, 1, 2, False, 4, {}),
}


@pytest.fixture(scope="module")
def reference():
    return reference_loss_and_grads()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_loss_and_every_gradient_match_the_single_process_reference(reference, name):
    world, tp, pp, cp, sp, chunks, extra = LAYOUTS[name]
    assert SEQ // cp < 28  # the pack's longest sample does not fit in one CP part
    ref_loss, ref_grads = reference
    layout = dict(tp=tp, pp=pp, sp=sp, cp=cp, cp_chunks=chunks, attention="fused", **extra)
    results = run_on_ranks(world, parallel_loss_and_grads, layout, tp=tp, pp=pp, vpp=extra.get("vpp"), cp=cp,
                           timeout=600)
    losses = [loss for loss, _ in results if loss is not None]
    assert len(losses) == world // pp and all(abs(x - ref_loss) <= TOLERANCE for x in losses), (losses, ref_loss)
    seen = set()
    for _, grads in results:  # every DP x CP replica (TP rank 0) holds the whole gradient
        seen |= set(grads)
        for key, grad in grads.items():
            diff = (grad - ref_grads[key]).abs().max().item()
            assert diff <= TOLERANCE, f"{key}: max |grad diff| {diff:.2e}"
    assert seen == set(ref_grads)
