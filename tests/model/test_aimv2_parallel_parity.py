"""AIMv2's loss (0.4 x pixel + 1.0 x text) and every parameter gradient under TP / SP / PP equal the
single-process plain-torch reference (fp32, two micro-batches of packed samples, random prefixes)."""

import pytest
from aimv2_parity import parallel_loss_and_grads, reference_loss_and_grads
from multiproc import run_on_ranks

TOLERANCE = 1e-5

LAYOUTS = {  # name: (world, tp, pp, sp, recompute)
    "tp1": (1, 1, 1, False, "none"),
    "tp2_sp": (2, 2, 1, True, "none"),
    "pp2": (2, 1, 2, False, "none"),
    "tp2_sp_full_recompute": (2, 2, 1, True, "full"),
}


@pytest.fixture(scope="module")
def reference():
    return reference_loss_and_grads()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_loss_and_every_gradient_match_single_process_reference(reference, name):
    world, tp, pp, sp, recompute = LAYOUTS[name]
    ref_loss, ref_grads = reference
    results = run_on_ranks(world, parallel_loss_and_grads, {"tp": tp, "pp": pp, "sp": sp, "recompute": recompute},
                           tp=tp, pp=pp)
    losses = [loss for loss, _ in results if loss is not None]
    grads = {k: v for _, g in results for k, v in g.items()}
    assert losses and all(abs(x - ref_loss) <= TOLERANCE for x in losses), (losses, ref_loss)
    assert set(grads) == set(ref_grads)
    for key, ref in ref_grads.items():
        diff = (grads[key] - ref).abs().max().item()
        assert diff <= TOLERANCE, f"{key}: max |grad diff| {diff:.2e}"
        assert ref.abs().max() > 0, f"{key}: the reference gradient is zero, the check is vacuous"


def test_unsupported_pipeline_layouts_are_refused_in_one_line():
    from genlip_megatron.model.aimv2 import check_aimv2_layout

    for pp, vpp in ((4, None), (2, 2)):
        with pytest.raises(ValueError, match="pipeline_model_parallel_size 1 or 2"):
            check_aimv2_layout(pp, vpp)
