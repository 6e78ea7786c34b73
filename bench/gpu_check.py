"""The first-GPU check: every GPU path of the system against its reference, and what one GPU does
per second, in one process on ONE GPU in under 8 minutes (docs/gpu_check.md).

    python bench/gpu_check.py                              # on a GPU; JSON into bench/results/
    python bench/gpu_check.py --device cpu --profile smoke # CPU, tiny sizes (tests/bench/test_gpu_check.py)

Checks, in order (each "pass", "fail" or "skipped" with its reason, never faked):
  environment       versions; torch's varlen attention API is the one the fused path calls
  varlen_vs_dense   fused prefix-LM attention (flash varlen, bf16) vs the dense mask (fp32)
  context_vs_dense  its context-parallel form (CP4 ranks' query shares, one after another) vs the same
  head_vs_full      head on loss positions vs the full head: equal in fp32; time and memory in bf16
  te_vs_local       Transformer Engine spec vs local spec on the same weights (bf16), both attentions
  fp8_tracks_bf16   50 training steps in FP8 follow the bf16 loss
  dali_mixed_vs_cpu nvJPEG decoding vs CPU decoding on real JPEG photos
  throughput        L/16 and g/16 (4 layers, full width, 16k-token pack), bf16 and FP8: step time,
                    model TFLOP/s, MFU, peak memory
Writes one JSON (machine, settings, every check's numbers) to bench/results/gpu_check-<gpu>-<date>.json,
prints one line per check, and exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine  # noqa: E402
from gpu_checks import decode, environment, layer_specs, numerics, training_runs  # noqa: E402
from gpu_checks.context import CheckContext, skipped  # noqa: E402

CHECKS = (
    ("environment", environment.check),
    ("varlen_vs_dense", numerics.varlen_vs_dense),
    ("context_vs_dense", numerics.context_vs_dense),
    ("head_vs_full", numerics.head_vs_full),
    ("te_vs_local", layer_specs.check),
    ("fp8_tracks_bf16", training_runs.fp8_tracks_bf16),
    ("dali_mixed_vs_cpu", decode.check),
    ("throughput", training_runs.throughput),
)
BUDGET_S = 480.0  # the promise: one GPU, under 8 minutes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_checks(ctx: CheckContext, names: list[str] | None = None, budget_s: float = BUDGET_S) -> dict:
    """Run the checks (all, or `names`) in this process; parallel state must be initialised."""
    import gc

    import torch

    results, start = {}, time.perf_counter()
    for name, fn in CHECKS:
        if names and name not in names:
            continue
        elapsed = time.perf_counter() - start
        if elapsed > budget_s:
            results[name] = skipped(f"time budget of {budget_s:.0f} s spent after {elapsed:.0f} s")
            continue
        t0 = time.perf_counter()
        try:
            results[name] = fn(ctx)
        except Exception as exc:  # noqa: BLE001 - a broken path is a result to report, not a crash
            results[name] = {"status": "fail", "reason": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-4000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{name:<18} {results[name]['status']:<8} {results[name]['seconds']:7.1f} s  "
              f"{results[name].get('reason', '')}", flush=True)
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    return results


def default_output(ctx: CheckContext) -> Path:
    import torch

    gpu = torch.cuda.get_device_name() if ctx.cuda else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return RESULTS / f"gpu_check-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--profile", choices=("gpu", "smoke"), default=None,
                        help="sizes: gpu (default on CUDA) or smoke (tiny; default on CPU)")
    parser.add_argument("--only", nargs="*", choices=[name for name, _ in CHECKS], help="run these checks")
    parser.add_argument("--jpeg-dir", help="folder of JPEG photos for dali_mixed_vs_cpu")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/gpu_check-<gpu>-<date>.json)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    args = parser.parse_args(argv)

    import torch

    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --device cpu for the CPU checks", file=sys.stderr)
        return 2
    profile = args.profile or ("gpu" if args.device == "cuda" else "smoke")
    wall = time.perf_counter()
    init_distributed(0, 1, "127.0.0.1", _free_port(), device=args.device)
    try:
        with tempfile.TemporaryDirectory() as work_dir:
            ctx = CheckContext(args.device, profile, args.jpeg_dir, work_dir)
            results = run_checks(ctx, args.only, args.budget_s)
            out = args.out or default_output(ctx)
    finally:
        destroy_distributed()
    summary = {status: [n for n, r in results.items() if r["status"] == status]
               for status in ("pass", "fail", "skipped")}
    record = {"machine": machine(), "settings": {"device": args.device, "profile": profile,
                                                 "budget_s": args.budget_s},
              "seconds": round(time.perf_counter() - wall, 1), "summary": summary, "checks": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"pass {len(summary['pass'])}, fail {len(summary['fail'])}, skipped {len(summary['skipped'])} "
          f"in {record['seconds']:.0f} s; wrote {out}")
    return 1 if summary["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
