"""`genlip demo` end to end on a sliver of Fashion-MNIST: a fixed number of steps, the plain PyTorch
reference beside our run at the same step, and a report that holds both and the time taken."""

import json
import os

import pytest

from data_tools import fashion_mnist as fm
from genlip_megatron.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(os.path.join(fm.DEFAULT_ROOT, fm.FILES["train"][0])),
                       reason="Debian package dataset-fashion-mnist is not installed"),
]


def test_demo_trains_fixed_steps_and_reports_the_plain_reference(tmp_path):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--train", "400", "--test", "40", "--probe-train", "80",
                 "--steps", "6", "--reference-steps", "3", "--vocab-size", "300"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 6  # exactly the steps asked for, whatever the machine's load
    assert set(results["results"]) == {"trained", "trained_early", "reference", "random", "pixels"}
    assert os.path.isdir(out / "run" / "iter_0000003")  # our checkpoint at the reference's step
    speed = results["speed"]
    assert speed["ours_samples_per_s"] > 0 and speed["reference_samples_per_s"] > 0
    assert speed["ratio"] == pytest.approx(speed["ours_samples_per_s"] / speed["reference_samples_per_s"])
    report = (out / "report.md").read_text()
    assert "plain PyTorch loop (HF model), 3 steps of 64" in report and "same run at step 3" in report
    assert "Whole demo:" in report and "Training speed" in report
    assert "Held-out caption loss logged during training" in report  # data.eval_manifest = the test split
    for name in ("trained", "trained_early", "reference"):
        assert 0.0 <= results["results"][name]["zero_shot_sum"] <= 1.0
