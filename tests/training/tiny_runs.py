"""A tiny GenLIP training run for the trainer tests: in a pooled world, or as real `genlip train` ranks.

The model (width 32, 2 layers, 4 heads, 64-token vocabulary, 2 x 2 patch images, 32-token packed
sequences) trains on SyntheticBatches, so every step costs well under a second on one core.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_attention_heads=4",
    "model.ffn_hidden_size=64", "model.mrope_section=[2,1,1]", "model.vocab_size=64",
    "model.make_vocab_size_divisible_by=8", "model.patch_size=4", "model.drop_path_rate=0.0",
    "data.image_size=8", "data.seq_length=32", "data.max_caption_tokens=8",
    "train.micro_batch_size=1", "train.global_batch_size=4", "train.synthetic_data=true",
    "train.step_timeout_s=300", "schedule.train_iters=4", "schedule.warmup_fraction=0.25",
    "logging.log_interval=1", "logging.progress_bar=false", "checkpoint.dir=",
]


def layout(tp: int = 1, pp: int = 1) -> list[str]:
    return [f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}"]


def tiny_config(overrides: list[str]):
    from genlip_megatron.config.load import load_config

    return load_config("tiny_cpu", TINY + list(overrides))


def train_in_pool(overrides: list[str], batch_source_factory=None) -> dict:
    """Run the trainer inside a pool worker (parallel state already laid out by run_on_ranks)."""
    from megatron.core import parallel_state

    from genlip_megatron.training.trainer import run_training

    cfg = tiny_config(overrides)
    source = None
    if batch_source_factory is not None:
        source = batch_source_factory(cfg, parallel_state.get_data_parallel_rank(),
                                      parallel_state.get_data_parallel_world_size())
    outcome = run_training(cfg, source)
    return {"losses": outcome.losses, "eval_losses": outcome.eval_losses, "exit_code": outcome.exit_code,
            "iteration": outcome.iteration,
            "skipped_steps": outcome.skipped_steps, "message": outcome.message}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RankProcesses:
    """`world` real `genlip train` processes wired like torchrun would (env variables), one core each."""

    def __init__(self, world: int, overrides: list[str], log_dir: str):
        port = _free_port()
        os.makedirs(log_dir, exist_ok=True)
        self.logs = [os.path.join(log_dir, f"rank{r}.log") for r in range(world)]
        self.procs = []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            with open(self.logs[rank], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "genlip_megatron.cli", "train", "tiny_cpu", *TINY, *overrides],
                    env=env, stdout=log, stderr=subprocess.STDOUT))

    def wait(self, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [proc.wait(max(1.0, deadline - time.monotonic())) for proc in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ranks did not finish in {timeout} s; logs:\n{self.tail()}") from None

    def signal(self, sig: int, ranks=None) -> None:
        for rank, proc in enumerate(self.procs):
            if ranks is None or rank in ranks:
                proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def running(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def log(self, rank: int) -> str:
        with open(self.logs[rank]) as f:
            return f.read()

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {path}\n{self.log(rank)[-chars:]}" for rank, path in enumerate(self.logs))


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for(predicate, procs: RankProcesses, timeout: float = 240, poll_s: float = 0.002):
    """Poll `predicate()` until it returns a truthy value; fail if the ranks exit or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if not procs.running():
            raise AssertionError(f"ranks exited before the awaited state:\n{procs.tail()}")
        time.sleep(poll_s)
    procs.kill()
    raise AssertionError(f"timed out after {timeout} s:\n{procs.tail()}")
