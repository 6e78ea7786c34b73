"""Training samples/s of `genlip train tiny_cpu` against a plain PyTorch loop, interleaved in one run.

    .venv/bin/python bench/train_step.py [--manifest M] [--rounds 8] [--steps 10] [--threads 2]
        [--layouts 1x2,2x1] [KEY=VALUE overrides for ours ...]

Ours: the real trainer (training/trainer.py run_training: the shard loader with DALI, megatron-core
DDP + distributed optimizer + schedules, metrics) on the tiny_cpu preset, gloo, CPU, once per
--layouts entry RANKSxTHREADS: `1x2` is one process on 2 threads, `2x1` two data-parallel ranks of one
thread each (what `genlip launch local --nproc 2` and `make demo` run on 2 cores; the global batch is the
same, split in a micro-batch per rank). Plain: eval/reference_training.py - the Hugging Face
reference model of the same size (genlip_megatron/hf: the exported GenLIP) trained by a plain loop
on --threads threads: batches of 64 unpacked samples (one per row, text right-padded), torch AdamW,
grad clipping, the same lr schedule. It reads the SAME shards, in the same global sample order,
decoded up front (so it pays no loader: the strongest baseline).

Every loop runs as long-lived child processes with --threads threads in all, and the loops take turns:
a round is `--steps` optimizer steps of one loop while the others wait, in an order that rotates every
round, so machine noise hits all alike. Per round: wall seconds (the slowest rank's), process CPU
seconds (all ranks) and samples. The first round of each is warm-up and dropped. Reported: samples/s
(median over rounds) by wall clock and by CPU time (CPU time is far less sensitive to other load on a
shared machine), each of ours over plain, the load average around every round. Data: `genlip demo`'s
Fashion-MNIST shards (built into data_cache/ when --manifest is not given; needs Debian's
dataset-fashion-mnist). Writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report  # noqa: E402

PRESET = "tiny_cpu"
REPO = Path(__file__).resolve().parents[1]


class _Clock:
    """Wall and CPU seconds and samples of one round."""

    def __init__(self):
        self.wall, self.cpu, self.samples = time.perf_counter(), time.process_time(), 0

    def result(self) -> dict:
        return {"wall_s": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu,
                "samples": self.samples}


class _GatedSource:
    """Wraps the trainer's batch source: every `steps` optimizer steps, report the round and wait."""

    def __init__(self, source, conn, steps: int, micro_per_step: int):
        self.source, self.conn, self.steps, self.micro_per_step = source, conn, steps, micro_per_step
        self.pulled, self.clock = 0, None

    def next(self) -> dict:
        if self.pulled % (self.steps * self.micro_per_step) == 0:
            if self.clock is not None:
                self.conn.send(self.clock.result())
            if self.conn.recv() == "stop":
                raise SystemExit(0)
            self.clock = _Clock()
        batch = self.source.next()
        self.pulled += 1
        self.clock.samples += batch.num_samples
        return batch

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


def ours(conn, rank: int, ranks: int, port: int, manifest: str, overrides: list[str], threads: int,
         steps: int, rounds: int) -> None:
    """One rank of `genlip train tiny_cpu` (data parallel over `ranks` processes, gloo)."""
    import torch

    torch.set_num_threads(threads)
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.step_split import StepSplit
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed
    from genlip_megatron.training.batches import build_batch_source
    from genlip_megatron.training.trainer import run_training

    log_dir = tempfile.mkdtemp()
    base = load_config(PRESET, [f"data.manifest={manifest}", *overrides])
    rows = StepSplit.one_micro_batch_per_rank(base, ranks).micro_batch_size
    per_rank = [f"train.micro_batch_size={rows}"] if ranks > 1 else []
    cfg = load_config(PRESET, [f"data.manifest={manifest}", "checkpoint.dir=", f"logging.tensorboard_dir={log_dir}",
                               f"schedule.train_iters={steps * rounds + 1}", "logging.log_interval=1000000",
                               "logging.progress_bar=false", *per_rank, *overrides])
    init_distributed(rank, ranks, "127.0.0.1", port, device="cpu", seed=cfg.train.seed)
    micro = StepSplit.of(cfg, dp_size=ranks).micro_batches
    conn.send({"ready": True, "config": {"seq_length": cfg.data.seq_length,
                                         "global_batch_size": cfg.train.global_batch_size,
                                         "micro_batch_size": cfg.train.micro_batch_size,
                                         "data_parallel_ranks": ranks, "threads_per_rank": threads,
                                         "attention": cfg.model.attention}})
    try:
        run_training(cfg, batch_source=_GatedSource(build_batch_source(cfg, rank, ranks), conn, steps, micro))
    except SystemExit:
        pass
    finally:
        destroy_distributed()


def plain(conn, manifest: str, threads: int, steps: int, rounds: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from genlip_megatron.config.load import load_config
    from genlip_megatron.eval.reference_training import BATCH_SIZE, ReferenceTrainer, reference_batches

    cfg = load_config(PRESET, [f"data.manifest={manifest}", f"schedule.train_iters={steps * rounds}"])
    batches = list(reference_batches(cfg, BATCH_SIZE * steps * rounds))
    trainer = ReferenceTrainer(cfg)
    conn.send({"ready": True})
    while conn.recv() != "stop":
        clock = _Clock()
        for _ in range(steps):
            batch = batches[trainer.steps % len(batches)]
            trainer.step(batch)
            clock.samples += len(batch["input_ids"])
        conn.send(clock.result())


def _manifest(path: str | None) -> str:
    if path:
        return path
    cached = REPO / "data_cache" / "fashion_mnist" / "shards" / "manifest.json"
    if not cached.exists():
        from genlip_megatron.commands import demo

        parser = argparse.ArgumentParser()
        demo.add_arguments(parser)
        demo.build_data(str(cached.parents[1]), parser.parse_args(["--out", str(cached.parents[1])]))
    return str(cached)


def _median_rate(rows: list[dict], key: str) -> float:
    return statistics.median(r["samples"] / r[key] for r in rows)


def _layouts(text: str, threads: int) -> list[tuple[int, int]]:
    """'1x2,2x1' -> [(ranks, threads per rank), ...]; each must use exactly --threads threads."""
    layouts = [tuple(int(n) for n in part.split("x")) for part in text.split(",") if part]
    for ranks, per_rank in layouts:
        if ranks < 1 or per_rank < 1 or ranks * per_rank != threads:
            raise SystemExit(f"--layouts {ranks}x{per_rank}: ranks x threads per rank must equal --threads {threads}")
    return layouts


class _Loop:
    """One measured loop: the child processes (one per rank) and their pipes; a round is every rank's
    `--steps` steps, started together. Round wall time: the slowest rank's; CPU time and samples: summed."""

    def __init__(self, name: str, label: str, children: list, pipes: list):
        self.name, self.label, self.children, self.pipes, self.rows = name, label, children, pipes, []

    def start(self) -> dict:
        for child in self.children:
            child.start()
        return [conn.recv() for conn in self.pipes][0]

    def round(self) -> dict:
        for conn in self.pipes:
            conn.send("go")
        parts = [conn.recv() for conn in self.pipes]
        return {"wall_s": max(p["wall_s"] for p in parts), "cpu_s": sum(p["cpu_s"] for p in parts),
                "samples": sum(p["samples"] for p in parts)}

    def stop(self) -> None:
        for conn in self.pipes:
            conn.send("stop")
        for child in self.children:
            child.join(timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", help="shards manifest.json (default: the demo's, built in data_cache/)")
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds of each loop (+1 warm-up)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each loop, all ranks together")
    parser.add_argument("--layouts", default="1x2,2x1",
                        help="our runs to measure, RANKSxTHREADS each (data-parallel ranks x threads per rank)")
    parser.add_argument("overrides", nargs="*", help="config overrides for ours, e.g. model.attention=dense")
    args = parser.parse_args()
    manifest = _manifest(args.manifest)
    layouts = _layouts(args.layouts, args.threads)
    rounds = args.rounds + 1
    ctx = mp.get_context("spawn")
    from genlip_megatron.eval.reference_training import BATCH_SIZE

    loops = []
    for ranks, per_rank in layouts:
        port, pipes = _free_port(), [ctx.Pipe() for _ in range(ranks)]
        children = [ctx.Process(target=ours, args=(pipes[r][1], r, ranks, port, manifest, args.overrides, per_rank,
                                                   args.steps, rounds)) for r in range(ranks)]
        loops.append(_Loop(f"ours_{ranks}x{per_rank}",
                           f"genlip train {PRESET}, {ranks} rank(s) x {per_rank} thread(s) (megatron-core, loader)",
                           children, [p[0] for p in pipes]))
    pipe = ctx.Pipe()
    loops.append(_Loop("plain", f"plain PyTorch loop, HF model, batch {BATCH_SIZE}, AdamW, {args.threads} threads",
                       [ctx.Process(target=plain, args=(pipe[1], manifest, args.threads, args.steps, rounds))],
                       [pipe[0]]))
    ready = {loop.name: loop.start() for loop in loops}
    load_before = os.getloadavg()
    for r in range(rounds):
        shift = r % len(loops)  # rotate who goes first, so machine drift hits every loop alike
        for loop in loops[shift:] + loops[:shift]:
            load = os.getloadavg()[0]
            result = {**loop.round(), "load_1min": load}
            loop.rows.append(result)
            print(f"round {r} {loop.name:9s}: {result['samples'] / result['wall_s']:7.1f} samples/s wall, "
                  f"{result['samples'] / result['cpu_s']:7.1f} per CPU-s, load {load:.1f}", flush=True)
    for loop in loops:
        loop.stop()
    measured = {loop.name: loop.rows[1:] for loop in loops}  # round 0 warms up
    plain_rows = measured["plain"]
    table = [{"loop": loop.label, "samples_per_s": _median_rate(measured[loop.name], "wall_s"),
              "samples_per_cpu_s": _median_rate(measured[loop.name], "cpu_s"),
              "samples_per_step": statistics.mean(r["samples"] for r in measured[loop.name]) / args.steps}
             for loop in loops]
    plain_row = table[-1]
    for loop, row in zip(loops[:-1], table):
        table.append({"loop": f"ratio {loop.name} / plain",
                      "samples_per_s": row["samples_per_s"] / plain_row["samples_per_s"],
                      "samples_per_cpu_s": row["samples_per_cpu_s"] / plain_row["samples_per_cpu_s"],
                      "samples_per_step": float("nan")})
    pair_ratios = {loop.name: statistics.median(o["samples"] / o["wall_s"] / (p["samples"] / p["wall_s"])
                                                for o, p in zip(measured[loop.name], plain_rows))
                   for loop in loops[:-1]}
    report("train_step", table, {
        "preset": PRESET, "ours_configs": {name: ready[name]["config"] for name in ready if name != "plain"},
        "overrides": args.overrides, "plain_batch": BATCH_SIZE, "threads": args.threads,
        "steps_per_round": args.steps, "rounds_measured": args.rounds, "manifest": manifest,
        "median_round_ratio_wall": pair_ratios,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rounds": measured,
        "note": "samples/s = median over rounds; a round's wall time is its slowest rank's, CPU-s the summed "
                "process CPU time of its ranks; the loops take turns in rotating order"})


if __name__ == "__main__":
    main()
