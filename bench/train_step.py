"""Training throughput of the tiny preset on CPU: one process, and two data-parallel processes (gloo).

    .venv/bin/python bench/train_step.py [--steps 20] [--warmup 3]

Runs the real trainer (genlip_megatron/training/trainer.py) on SyntheticBatches with the tiny_cpu
preset (width 128, 4 layers, global batch 8 packed sequences of 512 tokens), no checkpoints, metrics
to a temporary TensorBoard folder. Reports steps/s, samples/s (image-caption pairs) and tokens/s over
the measured steps (after `--warmup`), and the share of rank 0's step time spent in the loader,
forward/backward (megatron schedule incl. grad reduce), optimizer (grad norm, clip, AdamW, lr) and
logging (the per-step stats all-reduce + metric sinks). Each process gets cores/world torch threads.
Prints a table; writes bench/results/train_step.json with machine, commit and settings.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

PRESET = "tiny_cpu"
PHASES = {"loader": ("loader",), "forward_backward": ("forward_backward",), "optimizer": ("optimizer",),
          "logging": ("reduce_stats", "logging")}


def _rank_main(rank: int, world: int, port: int, overrides: list[str], threads: int, results) -> None:
    import torch

    torch.set_num_threads(threads)
    from genlip_megatron.config.load import load_config
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed
    from genlip_megatron.training.trainer import run_training

    cfg = load_config(PRESET, overrides)
    init_distributed(rank, world, "127.0.0.1", port, device="cpu", seed=cfg.train.seed)
    try:
        outcome = run_training(cfg)
    finally:
        destroy_distributed()
    if rank == 0:
        results.put((outcome.step_seconds, outcome.step_work))


def measure(world: int, steps: int, warmup: int, log_dir: str) -> dict:
    threads = max(1, (os.cpu_count() or 1) // world)
    overrides = ["train.synthetic_data=true", "checkpoint.dir=", f"logging.tensorboard_dir={log_dir}",
                 f"schedule.train_iters={warmup + steps}", "logging.log_interval=1000000",
                 "logging.progress_bar=false"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, overrides, threads, results))
             for r in range(world)]
    for proc in procs:
        proc.start()
    step_seconds, step_work = results.get(timeout=1800)
    for proc in procs:
        proc.join()
    measured = step_seconds[warmup:]
    totals = {phase: sum(sum(step.get(k, 0.0) for k in keys) for step in measured)
              for phase, keys in PHASES.items()}
    wall = sum(totals.values())
    samples = sum(s for s, _ in step_work[warmup:])
    tokens = sum(t for _, t in step_work[warmup:])
    row = {"processes": world, "threads_per_process": threads, "steps_per_s": len(measured) / wall,
           "samples_per_s": samples / wall, "tokens_per_s": tokens / wall}
    row.update({f"{phase}_%": 100 * value / wall for phase, value in totals.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # other work on the machine skews every number below
    with tempfile.TemporaryDirectory() as log_dir:
        rows = [measure(world, args.steps, args.warmup, os.path.join(log_dir, str(world))) for world in (1, 2)]
    report("train_step", rows, {"preset": PRESET, "steps": args.steps, "warmup": args.warmup,
                                "data": "SyntheticBatches", "layout": "TP1 PP1, DP = processes",
                                "note": "shares are of rank 0's measured step time",
                                "load_average_1min_before": load_before})


if __name__ == "__main__":
    main()
