"""`genlip demo --out DIR` (what `make demo` runs): a tiny GenLIP learns Fashion-MNIST on one CPU.

Stages, each a library call or the `genlip train` command, each timed:
  1. data       Debian's Fashion-MNIST -> PNGs + captions JSONL (data_tools/fashion_mnist.py)
  2. tokenizer  byte-level BPE fitted on the training captions
  3. shards     `genlip shards build` of the training JSONL (+ merge -> manifest.json)
  4. train      `genlip train tiny_cpu` in a child process on 2 CPU threads: a short calibration run
                measures seconds per step, then the real run gets as many steps as fit in --minutes
  5. evaluate   the trained model, a random model of the same size, and raw pixels (eval/suite.py)
  6. report     DIR/report.md + loss curve + example images (eval/demo_report.py)
Expect (2 free CPU cores): zero-shot top-1 well above the random model's ~0.1, comparable to the
raw-pixel baseline (~0.8); see docs/demo.md. Re-running with the same DIR reuses finished stages' output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

from genlip_megatron.checkpoint import run_dir as run_layout

PRESET = "tiny_cpu"
CALIBRATION_STEPS = 30
STARTUP_MARGIN = 0.85  # share of the budget given to steps; the rest covers start-up and saves


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (data, shards, run, report.md)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--steps", type=int, help="train exactly this many steps (skips calibration)")
    parser.add_argument("--train", type=int, default=20000, help="Fashion-MNIST training images to use")
    parser.add_argument("--test", type=int, default=1000, help="held-out test images to evaluate on")
    parser.add_argument("--probe-train", type=int, default=5000, help="training images the probes are fitted on")
    parser.add_argument("--templates", type=int, default=1, help="zero-shot templates per class (1..5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and evaluation")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary (<= the preset's 512)")
    parser.add_argument("--seed", type=int, default=0)


@contextmanager
def _stage(timings: dict, name: str):
    print(f"[demo] {name} ...", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"[demo] {name} done in {timings[name]:.1f} s", flush=True)


def build_data(out: str, args) -> dict:
    """Stages 1-3; returns paths of the JSONLs, zero_shot.json, tokenizer.json and manifest.json."""
    from data_tools import fashion_mnist
    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.merge import merge
    from data_tools.unit import BuildSettings
    from genlip_megatron.config.schema import DataConfig
    from genlip_megatron.data.tokenizer import train_bpe

    paths = fashion_mnist.convert(os.path.join(out, "data"), args.train, args.test, args.seed)
    paths["tokenizer"] = os.path.join(out, "tokenizer.json")
    if not os.path.exists(paths["tokenizer"]):  # refitting would change the hash and orphan the shards
        train_bpe((r["caption"] for r in fashion_mnist.read_jsonl(paths["train"])), args.vocab_size,
                  paths["tokenizer"])
    shards = os.path.join(out, "shards")
    settings = BuildSettings(caption=CaptionSettings(fields=("caption",)))
    result = run_build([paths["train"]], shards, paths["tokenizer"], settings, DataConfig().prompt, progress=False)
    if result["failed"]:
        raise RuntimeError(f"shard build failed for {result['failed']}")
    merge(shards)
    paths["manifest"] = os.path.join(shards, "manifest.json")
    return paths


def _train(run_dir: str, manifest: str, steps: int, threads: int, timeout_s: float | None) -> int:
    """`genlip train tiny_cpu` as a child process (its own process group and megatron state)."""
    overrides = [f"data.manifest={manifest}", f"checkpoint.dir={run_dir}", f"schedule.train_iters={steps}",
                 f"checkpoint.save_interval={steps}", "logging.progress_bar=false", "logging.log_interval=50"]
    # The child reads its thread count from OMP_NUM_THREADS; the config has no such key by design.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)  # a single-process run, whatever launched us
    env["MASTER_PORT"] = str(_free_port())  # the default 29500 may belong to another run on this host
    child = subprocess.Popen([sys.executable, "-m", "genlip_megatron.cli", "train", PRESET, *overrides], env=env)
    try:
        return child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print("[demo] training over its time limit: asking it to save and stop", flush=True)
        child.send_signal(signal.SIGTERM)  # the trainer finishes the step, saves, exits 75
        return child.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds_per_step(run_dir: str) -> float:
    """Median step time of the second half of a run's metrics.jsonl (the first steps warm up)."""
    with open(run_layout.metrics_path(run_dir), encoding="utf-8") as f:
        times = [json.loads(line)["seconds_per_step"] for line in f if line.strip()]
    return statistics.median(times[len(times) // 2:])


def plan_steps(out: str, manifest: str, args, timings: dict) -> int:
    if args.steps:
        return args.steps
    calibration = os.path.join(out, "calibration")
    shutil.rmtree(calibration, ignore_errors=True)
    with _stage(timings, "calibration"):
        code = _train(calibration, manifest, CALIBRATION_STEPS, args.threads, None)
        if code != 0:
            raise RuntimeError(f"calibration training exited with {code}")
        per_step = seconds_per_step(calibration)
    shutil.rmtree(calibration, ignore_errors=True)
    steps = max(50, int(args.minutes * 60 * STARTUP_MARGIN / per_step))
    print(f"[demo] {per_step * 1e3:.0f} ms/step -> {steps} steps in {args.minutes:g} minutes", flush=True)
    return steps


def run(args) -> int:
    import torch

    from genlip_megatron.eval.demo_report import evaluate_and_report

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(args.threads)
    timings: dict = {}
    try:
        with _stage(timings, "data, tokenizer, shards"):
            paths = build_data(out, args)
        run_dir = os.path.join(out, "run")
        if run_layout.has_checkpoint(run_dir):
            print(f"[demo] reusing the trained run in {run_dir} (delete it to train again)", flush=True)
        else:
            steps = plan_steps(out, paths["manifest"], args, timings)
            with _stage(timings, "train"):
                code = _train(run_dir, paths["manifest"], steps, args.threads, 2 * args.minutes * 60 + 300)
            if code not in (0, 75):  # 75: stopped over time, but saved
                raise RuntimeError(f"training exited with {code}; see its log above")
        with _stage(timings, "evaluate + report"):
            report = evaluate_and_report(out, run_dir, paths, args, timings)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[demo] wrote {report}")
    return 0
