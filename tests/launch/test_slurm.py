"""Real SLURM (a one-node cluster: launch/slurm_local_cluster.sh): submit, complete, preempt, resume.

Skipped only where sbatch is not on PATH. Each job is the tiny_cpu preset with 2 gloo ranks on CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM is not installed (no sbatch)")


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory) -> str:
    """256 Fashion-MNIST images as shards (the demo's own data path), ~5 s."""
    from genlip_megatron.commands.demo import build_data

    out = tmp_path_factory.mktemp("demo_data")
    return build_data(str(out), argparse.Namespace(train=256, test=16, seed=0, vocab_size=512))["manifest"]


def _python_env() -> list[str]:
    """Make the job use this interpreter: its venv if it is one, else its folder on PATH."""
    if (Path(sys.prefix) / "bin" / "activate").exists():
        return [f"launch.venv={sys.prefix}"]
    return [f"launch.setup=export PATH={Path(sys.executable).parent}:$PATH"]


def _submit(run_dir: Path, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "genlip_megatron.cli", "submit", "tiny_cpu", f"checkpoint.dir={run_dir}",
           "launch.nodes=1", "launch.gpus_per_node=2", "launch.cpus_per_rank=1", "logging.log_interval=1",
           "train.micro_batch_size=4",  # tiny_cpu's one micro-batch of 8, over two ranks
           *_python_env(), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=run_dir.parent, check=False)
    assert done.returncode == 0, done.stderr
    return re.search(r"submitted job (\d+)", done.stdout).group(1)


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_demo_training_with_two_tasks_completes_with_logs_and_checkpoint(tmp_path, demo_manifest):
    run_dir = tmp_path / "run"
    job = _submit(run_dir, f"data.manifest={demo_manifest}", "launch.launcher=srun", "schedule.train_iters=4",
                  "checkpoint.save_interval=2", "launch.time=5", "launch.signal_lead_s=60")
    state = _wait(lambda: _job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                  and _job(job), 240, f"job {job} to end")
    batch_log = (run_dir / "slurm" / f"genlip-{job}.out").read_text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", batch_log
    assert (run_dir / "latest").read_text().strip() == "iter_0000004"
    ranks = sorted((run_dir / "slurm" / job).glob("rank-*.log"))
    assert [p.name for p in ranks] == ["rank-00000.log", "rank-00001.log"]
    assert "step 4/4" in ranks[0].read_text()
    assert all("exit 0" in p.read_text() for p in ranks)
    assert [s["step"] for s in _steps(run_dir)] == [1, 2, 3, 4]


def test_signal_before_time_limit_checkpoints_requeues_and_resumes(tmp_path, demo_manifest):
    # --time=2 min with a 100 s lead: USR1 comes 20-50 s in (SLURM checks time limits every ~30 s).
    run_dir = tmp_path / "run"
    job = _submit(run_dir, f"data.manifest={demo_manifest}", "launch.launcher=torchrun",
                  "schedule.train_iters=1000", "schedule.warmup_fraction=0.0", "optimizer.lr=0.01",
                  "checkpoint.save_interval=1000", "launch.time=2", "launch.signal_lead_s=100",
                  "launch.job_name=preempt")
    try:
        _wait(lambda: int(_job(job).get("Restarts", 0)) >= 1, 180, "the job to requeue itself")
        stopped_at = int((run_dir / "latest").read_text().strip().removeprefix("iter_"))
        # SLURM holds a requeued job for ~2 minutes (BeginTime); start it now to keep the test short.
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
        _wait(lambda: any(s["step"] > stopped_at for s in _steps(run_dir)), 150, "the resumed run's first step")
    finally:
        subprocess.run(["scancel", job], check=False)
    batch_log = (run_dir / "slurm" / f"preempt-{job}.out").read_text()
    assert "USR1: asking every rank to checkpoint and stop" in batch_log
    assert f"requeueing; resumes from iter_{stopped_at:07d}" in batch_log
    rank0 = (run_dir / "slurm" / job / "rank-00000.log").read_text()
    assert "stop signal received" in rank0 and "exit 75" in rank0
    assert f"resumed from {run_dir}/iter_{stopped_at:07d} at step {stopped_at}" in rank0
    steps = _steps(run_dir)
    numbers = [s["step"] for s in steps]
    assert numbers == list(range(1, len(numbers) + 1))  # no step lost, none repeated
    loss = {s["step"]: s["loss"] for s in steps}
    # A run restarted from scratch would log the initial loss again; the resumed one continues below it.
    assert loss[stopped_at + 1] < loss[1] - 0.2, loss
