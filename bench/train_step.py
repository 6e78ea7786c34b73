"""Training samples/s of `genlip train tiny_cpu` against a plain PyTorch loop, interleaved in one run.

    .venv/bin/python bench/train_step.py [--manifest M] [--rounds 8] [--steps 10] [--threads 2]

A (ours): the real trainer (training/trainer.py run_training: the shard loader with DALI, megatron-core
DDP + distributed optimizer + schedules, metrics) on the tiny_cpu preset, one rank, gloo, CPU.
B (plain): eval/reference_training.py - the Hugging Face reference model of the same size
(genlip_megatron/hf: the exported GenLIP) trained by a plain loop: batches of 64 unpacked samples (one
per row, text right-padded), torch AdamW, grad clipping, the same lr schedule. B reads the SAME
shards, in the same global sample order, decoded up front (so B pays no loader: the strongest
baseline).

Both run as long-lived child processes with `--threads` torch threads each and take turns: a round is
`--steps` optimizer steps of one of them while the other waits, rounds alternate A B B A A B ..., so
machine noise hits both alike. Per round: wall and process CPU seconds and samples. The first round
of each is warm-up and dropped. Reported: samples/s (median over rounds) by wall clock and by CPU time
(CPU time is far less sensitive to other load on a shared machine), the ratio ours / plain, the load
average around every round. Data: `genlip demo`'s Fashion-MNIST shards (built into data_cache/ when
--manifest is not given; needs Debian's dataset-fashion-mnist). Writes bench/results/train_step.json.
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


def ours(conn, manifest: str, overrides: list[str], threads: int, steps: int, rounds: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.step_split import StepSplit
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed
    from genlip_megatron.training.batches import build_batch_source
    from genlip_megatron.training.trainer import run_training

    log_dir = tempfile.mkdtemp()
    cfg = load_config(PRESET, [f"data.manifest={manifest}", "checkpoint.dir=", f"logging.tensorboard_dir={log_dir}",
                               f"schedule.train_iters={steps * rounds + 1}", "logging.log_interval=1000000",
                               "logging.progress_bar=false", *overrides])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed(0, 1, "127.0.0.1", port, device="cpu", seed=cfg.train.seed)
    micro = StepSplit.of(cfg, dp_size=1).micro_batches
    conn.send({"ready": True, "config": {"seq_length": cfg.data.seq_length,
                                         "global_batch_size": cfg.train.global_batch_size,
                                         "micro_batch_size": cfg.train.micro_batch_size,
                                         "attention": cfg.model.attention}})
    try:
        run_training(cfg, batch_source=_GatedSource(build_batch_source(cfg, 0, 1), conn, steps, micro))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", help="shards manifest.json (default: the demo's, built in data_cache/)")
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds of each loop (+1 warm-up)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides for ours, e.g. model.attention=dense")
    args = parser.parse_args()
    manifest = _manifest(args.manifest)
    rounds = args.rounds + 1
    ctx = mp.get_context("spawn")
    pipes = {name: ctx.Pipe() for name in ("ours", "plain")}
    children = {
        "ours": ctx.Process(target=ours, args=(pipes["ours"][1], manifest, args.overrides, args.threads,
                                               args.steps, rounds)),
        "plain": ctx.Process(target=plain, args=(pipes["plain"][1], manifest, args.threads, args.steps, rounds)),
    }
    for child in children.values():
        child.start()
    ready = {name: pipes[name][0].recv() for name in children}
    load_before = os.getloadavg()
    rows: dict[str, list[dict]] = {"ours": [], "plain": []}
    for r in range(rounds):
        for name in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
            load = os.getloadavg()[0]
            pipes[name][0].send("go")
            result = pipes[name][0].recv()
            result["load_1min"] = load
            rows[name].append(result)
            print(f"round {r} {name:5s}: {result['samples'] / result['wall_s']:7.1f} samples/s wall, "
                  f"{result['samples'] / result['cpu_s']:7.1f} per CPU-s, load {load:.1f}", flush=True)
    for name in children:
        pipes[name][0].send("stop")
    for child in children.values():
        child.join(timeout=120)
    measured = {name: rows[name][1:] for name in rows}  # round 0 warms up
    table = []
    from genlip_megatron.eval.reference_training import BATCH_SIZE

    for name, label in (("ours", f"genlip train {PRESET} (megatron-core, loader)"),
                        ("plain", f"plain PyTorch loop, HF model, batch {BATCH_SIZE}, AdamW")):
        table.append({"loop": label, "samples_per_s": _median_rate(measured[name], "wall_s"),
                      "samples_per_cpu_s": _median_rate(measured[name], "cpu_s"),
                      "samples_per_step": statistics.mean(r["samples"] for r in measured[name]) / args.steps})
    pair_ratios = [o["samples"] / o["wall_s"] / (p["samples"] / p["wall_s"])
                   for o, p in zip(measured["ours"], measured["plain"])]
    table.append({"loop": "ratio ours / plain", "samples_per_s": table[0]["samples_per_s"] / table[1]["samples_per_s"],
                  "samples_per_cpu_s": table[0]["samples_per_cpu_s"] / table[1]["samples_per_cpu_s"],
                  "samples_per_step": float("nan")})
    report("train_step", table, {
        "preset": PRESET, "ours_config": ready["ours"]["config"], "overrides": args.overrides,
        "plain_batch": BATCH_SIZE, "threads": args.threads, "steps_per_round": args.steps,
        "rounds_measured": args.rounds, "manifest": manifest,
        "median_round_ratio_wall": statistics.median(pair_ratios),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rounds": measured,
        "note": "samples/s = median over rounds; CPU-s = process CPU time (both threads); rounds alternate"})


if __name__ == "__main__":
    main()
