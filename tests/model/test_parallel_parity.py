"""GenLIP's loss and every parameter gradient under TP / SP / PP / VPP equal the single-process
plain-torch reference (fp32, dropout and drop-path off, a pack of samples of different lengths)."""

import pytest
from multiproc import run_on_ranks
from parallel_parity import parallel_loss_and_grads, reference_loss_and_grads

TOLERANCE = 1e-5

LAYOUTS = {  # name: (world, tp, pp, vpp, sp)
    "tp1": (1, 1, 1, None, False),
    "tp2": (2, 2, 1, None, False),
    "tp2_sp": (2, 2, 1, None, True),
    "pp2": (2, 1, 2, None, False),
    "pp2_vpp2": (2, 1, 2, 2, False),
    "tp2_pp2_sp": (4, 2, 2, None, True),
}


@pytest.fixture(scope="module")
def reference():
    return reference_loss_and_grads()


def _merge(results):
    losses = [loss for loss, _ in results if loss is not None]
    grads = {}
    for _, g in results:
        grads.update(g)
    return losses, grads


# The dense-mask path on every layout; the fused (varlen) path and activation recompute on a
# representative subset.
CASES = [(name, "dense", "none") for name in LAYOUTS] + [
    (name, "fused", "none") for name in ("tp1", "tp2_sp", "pp2_vpp2")] + [
    ("tp2_sp", "dense", "full"), ("pp2", "fused", "full"), ("tp2", "dense", "selective")]


@pytest.mark.parametrize("name,attention,recompute", CASES)
def test_loss_and_every_gradient_match_single_process_reference(reference, name, attention,
                                                                 recompute):
    world, tp, pp, vpp, sp = LAYOUTS[name]
    ref_loss, ref_grads = reference
    layout = dict(tp=tp, pp=pp, vpp=vpp, sp=sp, attention=attention, recompute=recompute)
    results = run_on_ranks(world, parallel_loss_and_grads, layout, tp=tp, pp=pp, vpp=vpp)
    losses, grads = _merge(results)
    assert losses and all(abs(x - ref_loss) <= TOLERANCE for x in losses), (losses, ref_loss)
    assert set(grads) == set(ref_grads)
    for key, ref in ref_grads.items():
        diff = (grads[key] - ref).abs().max().item()
        assert diff <= TOLERANCE, f"{key}: max |grad diff| {diff:.2e}"
