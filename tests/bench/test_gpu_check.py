"""bench/gpu_check.py on CPU: the checks that can run here pass with their numbers, the GPU-only ones
are reported as skipped for want of a GPU (never faked), a broken check is reported as failed, and
each check can fail."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
from gpu_checks import decode, numerics  # noqa: E402
from gpu_checks.context import CheckContext  # noqa: E402

GPU_ONLY = {"te_vs_local", "fp8_tracks_bf16", "dali_mixed_vs_cpu"}


@pytest.fixture(scope="module")
def cpu_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "result.json"
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_cpu_checks_pass_and_the_gpu_checks_say_why_they_were_skipped(cpu_record):
    checks, summary = cpu_record["checks"], cpu_record["summary"]
    assert set(checks) == {name for name, _ in gpu_check.CHECKS}
    assert set(summary["skipped"]) == GPU_ONLY and not summary["fail"]
    for name in GPU_ONLY:
        assert checks[name]["reason"].startswith("no GPU"), checks[name]
    assert checks["environment"]["varlen_api"] == "ok" and checks["environment"]["torch"] == torch.__version__
    assert checks["varlen_vs_dense"]["max_abs_output_diff"] <= 1e-5
    assert checks["varlen_vs_dense"]["max_abs_grad_diff"] <= 1e-5
    assert checks["context_vs_dense"]["max_abs_output_diff"] <= 1e-5
    assert checks["context_vs_dense"]["max_abs_grad_diff"] <= 1e-5
    assert checks["head_vs_full"]["loss_relative_diff"] <= 1e-5
    assert 0 < checks["head_vs_full"]["loss_positions"] < checks["head_vs_full"]["tokens"]
    (run,) = checks["throughput"]["runs"]
    assert math.isfinite(run["final_loss"]) and run["model_tflops"] > 0 and run["step_s"] > 0
    assert run["mfu_of_bf16_peak"] is None  # no MFU is claimed on CPU
    assert cpu_record["settings"] == {"device": "cpu", "profile": "smoke", "budget_s": gpu_check.BUDGET_S}


def test_a_broken_check_is_a_failure_with_its_reason_and_a_spent_budget_skips_the_rest(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "CHECKS", (("broken", lambda ctx: 1 / 0), ("fine", lambda ctx: {"status": "pass"})))
    ctx = CheckContext("cpu", "smoke", None, str(tmp_path))
    results = gpu_check.run_checks(ctx)
    assert results["broken"]["status"] == "fail" and "ZeroDivisionError" in results["broken"]["reason"]
    assert results["fine"]["status"] == "pass"
    late = gpu_check.run_checks(ctx, budget_s=-1.0)
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in late.values())


def test_the_attention_check_fails_when_the_kernel_ignores_the_causal_text_mask(monkeypatch, tmp_path):
    from genlip_megatron.model import varlen_attention

    fused, reference = varlen_attention.prefix_lm_varlen_attention, varlen_attention.varlen_attention_reference

    def no_causal(q, k, v, spans, scale):  # text sees the whole sample: a wrong prefix-LM mask
        return fused(q, k, v, spans, scale, kernel=lambda *a: reference(*a[:5], False, a[6]))

    ctx = CheckContext("cpu", "smoke", None, str(tmp_path))
    assert numerics.varlen_vs_dense(ctx)["status"] == "pass"
    monkeypatch.setattr(varlen_attention, "prefix_lm_varlen_attention", no_causal)
    assert numerics.varlen_vs_dense(ctx)["status"] == "fail"


def test_the_decoding_comparison_runs_on_real_photos_and_their_jpeg_flavours():
    photos = decode.sample_photos(None)
    assert len(photos) >= 2  # scikit-learn's and matplotlib's sample photos (declared dependencies)
    variants = decode.jpeg_variants(photos[:1])
    assert len(variants) == 6 and all(data[:2] == b"\xff\xd8" for data in variants.values())
    # CPU against CPU: the comparison itself (the GPU run compares "cpu" with "mixed").
    same = decode.compare(variants, "cpu", "cpu")
    assert same["images"] == 6 * len(decode.SIZES) and same["max_levels"] == 0.0
