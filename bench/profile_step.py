"""Where a tiny training step's time goes: torch profiler + cProfile over `genlip train tiny_cpu`.

    .venv/bin/python bench/profile_step.py --manifest demo_out/shards/manifest.json [--steps 20]
        [--warmup 5] [--threads 2] [KEY=VALUE overrides ...]

Runs the real trainer in this process (one rank, gloo, CPU) on the given shards (or synthetic
batches without --manifest) and profiles the measured steps: the torch profiler's operator table
(self CPU time, top 30) and named regions (loader, forward/backward, optimizer, logging), and
cProfile's cumulative table of the Python side, and self CPU time grouped by kind (GEMM, attention,
fused kernels, Python, collectives, other tensor ops). Writes bench/results/profile_step.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine  # noqa: E402

KINDS = (  # (label, test on the profiler event name), first match wins
    ("matrix multiplies (GEMM)", lambda n: n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel (SDPA)", lambda n: "scaled_dot_product" in n),
    ("compiled fused kernels", lambda n: "CompiledFxGraph" in n or n.startswith("Torch-Compiled")),
    ("Python: step, modules, autograd", lambda n: not n.startswith(("aten::", "c10d::", "## "))),
    ("collectives (gloo)", lambda n: n.startswith("c10d::")),
    ("other tensor ops (elementwise, copy)", lambda n: True),
)


def _kinds(events) -> list[tuple[str, float]]:
    totals = dict.fromkeys(label for label, _ in KINDS)
    for event in events:
        label = next(label for label, test in KINDS if test(event.key))
        totals[label] = (totals[label] or 0) + event.self_cpu_time_total
    whole = sum(v or 0 for v in totals.values()) or 1
    return [(label, (value or 0) / whole) for label, value in totals.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="tiny_cpu")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from genlip_megatron.config.load import load_config
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed
    from genlip_megatron.training import trainer

    data = [f"data.manifest={args.manifest}"] if args.manifest else ["train.synthetic_data=true"]
    log_dir = tempfile.mkdtemp()
    cfg = load_config(args.preset, data + ["checkpoint.dir=", f"logging.tensorboard_dir={log_dir}",
                                           f"schedule.train_iters={args.warmup + args.steps}",
                                           "logging.log_interval=1000000", "logging.progress_bar=false",
                                           *args.overrides])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed(0, 1, "127.0.0.1", port, device="cpu", seed=cfg.train.seed)

    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                      schedule=torch.profiler.schedule(wait=args.warmup, warmup=0,
                                                                       active=args.steps),
                                      record_shapes=False)
    python = cProfile.Profile()
    inner = trainer.train_step
    state = {"step": 0}

    def profiled_step(*a, **k):
        # cProfile only the measured steps; the torch profiler schedule skips the warm-up itself
        if state["step"] == args.warmup:
            python.enable()
            state["cpu"] = time.process_time()
        with torch.profiler.record_function("train_step"):
            result = inner(*a, **k)
        state["step"] += 1
        profiler.step()
        return result

    trainer.train_step = profiled_step
    load = os.getloadavg()[0]
    with profiler:
        outcome = trainer.run_training(cfg)
    python.disable()
    cpu_seconds = time.process_time() - state["cpu"]
    destroy_distributed()

    measured = outcome.step_seconds[args.warmup:]
    phases = sorted({k for s in measured for k in s})
    total = sum(sum(s.values()) for s in measured)
    samples = sum(s for s, _ in outcome.step_work[args.warmup:])
    tokens = sum(t for _, t in outcome.step_work[args.warmup:])
    lines = [f"machine: {machine()}", f"load average (1 min) before: {load:.2f}, after: {os.getloadavg()[0]:.2f}",
             f"settings: preset={args.preset} threads={args.threads} steps={args.steps} data={data[0]} "
             f"overrides={args.overrides}",
             f"{samples / total:.1f} samples/s, {1e3 * total / len(measured):.0f} ms/step, "
             f"{samples / len(measured):.1f} samples/step, {tokens / len(measured):.0f} tokens/step; "
             f"process CPU time {1e3 * cpu_seconds / len(measured):.0f} ms/step = "
             f"{samples / cpu_seconds:.1f} samples per CPU-second (profilers on: slower than bench/train_step.py)",
             "",
             "phase shares of the trainer's step time:"]
    lines += [f"  {p:18s} {100 * sum(s.get(p, 0.0) for s in measured) / total:5.1f}%" for p in phases]
    lines += ["", "self CPU time by kind (torch profiler, measured steps):"]
    lines += [f"  {kind:34s} {100 * share:5.1f}%" for kind, share in _kinds(profiler.key_averages())]
    lines += ["", "torch operators (self CPU time, measured steps):",
              profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)]
    text = io.StringIO()
    pstats.Stats(python, stream=text).sort_stats("cumulative").print_stats(45)
    lines += ["", "Python (cProfile, cumulative, measured steps):", text.getvalue()]
    text = io.StringIO()
    pstats.Stats(python, stream=text).sort_stats("tottime").print_stats(40)
    lines += ["", "Python (cProfile, own time, measured steps):", text.getvalue()]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "profile_step.txt"
    out.write_text("\n".join(lines))
    print("\n".join(lines[:12 + len(phases)]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
