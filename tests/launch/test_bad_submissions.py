"""Bad submissions fail before sbatch runs, with exit code 2 and one line per reason."""

from __future__ import annotations

import os
import stat

import pytest
from launch_dataset import empty_dataset

from genlip_megatron.cli import main

TWO_RANKS = ["train.micro_batch_size=4"]  # tiny_cpu steps in one micro-batch of 8 on one rank


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An sbatch on PATH that records being called: none of these cases may reach it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "sbatch_called"
    script = bindir / "sbatch"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return marker


@pytest.fixture
def manifest(tmp_path):
    return empty_dataset(tmp_path / "data")


CASES = {
    "gpus_not_divisible_by_tp_x_pp": (["train.device=cuda", "launch.nodes=3", "launch.gpus_per_node=2",
                                       "parallel.tensor_model_parallel_size=4"],
                                      "6 GPUs (launch.nodes=3 x launch.gpus_per_node=2) are not divisible by "
                                      "TP x PP x CP = 4 x 1 x 1 = 4"),
    "missing_manifest": (["data.manifest=/nonexistent/manifest.json"],
                         "data.manifest: /nonexistent/manifest.json: no dataset here"),
    "vocabulary_below_the_tokenizer": (["model.vocab_size=100"], "data.manifest: model.vocab_size=100 is smaller "
                                       "than the tokenizer's"),
    "container_and_venv": (["launch.container_image=img.sqsh", "launch.venv=VENV"],
                           "launch.container_image and launch.venv are both set"),
    "signal_lead_longer_than_time": (["launch.time=10", "launch.signal_lead_s=900"],
                                     "launch.signal_lead_s=900 must be positive and shorter than launch.time=10"),
    "bad_time": (["launch.time=4h"], "launch.time='4h' must be an sbatch time"),
    "unknown_launcher": (["launch.launcher=mpirun"], "launch.launcher: unknown value 'mpirun'"),
    "no_run_dir": (["checkpoint.dir="], "checkpoint.dir is empty"),
    "missing_stage1_checkpoint": (["checkpoint.load=/nonexistent/iter_0001000"],
                                  "checkpoint.load=/nonexistent/iter_0001000: no such checkpoint"),
    "env_not_key_value": (["launch.env=[NCCL_DEBUG]"], "launch.env[0]='NCCL_DEBUG' must be KEY=VALUE"),
    "unknown_key": (["launch.gpus=8"], "unknown key 'launch.gpus'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_submission_fails_before_sbatch_with_one_line_reason(name, capsys, tmp_path, fake_sbatch, manifest):
    overrides, reason = CASES[name]
    overrides = [o.replace("VENV", str(tmp_path / "venv")) for o in overrides]
    if name == "container_and_venv":
        (tmp_path / "venv" / "bin").mkdir(parents=True)
        (tmp_path / "venv" / "bin" / "activate").write_text("")
    args = ["submit", "tiny_cpu", f"data.manifest={manifest}", f"checkpoint.dir={tmp_path}/run",
            "launch.gpus_per_node=2", *TWO_RANKS, *overrides]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("genlip submit: ") and reason in err[0], err[0]
    assert not fake_sbatch.exists()


def test_a_good_submission_reaches_sbatch(capsys, tmp_path, fake_sbatch, manifest):
    args = ["submit", "tiny_cpu", f"data.manifest={manifest}", f"checkpoint.dir={tmp_path}/run",
            "launch.gpus_per_node=2", "launch.cpus_per_rank=1", *TWO_RANKS]
    assert main(args) == 0
    assert fake_sbatch.exists()
    assert (tmp_path / "run" / "slurm").is_dir()
    assert "submitted job 1" in capsys.readouterr().out


def test_no_sbatch_on_path_is_a_one_line_failure(capsys, tmp_path, monkeypatch, manifest):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["submit", "tiny_cpu", f"data.manifest={manifest}", f"checkpoint.dir={tmp_path}/run",
                 "launch.gpus_per_node=2", *TWO_RANKS]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err
