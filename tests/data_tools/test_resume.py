"""Kill -9 during a multi-worker build, re-run: the dataset equals an uninterrupted build byte for byte."""

import os
import signal
import subprocess
import sys
import time

from data_tools.merge import merge
from data_tools.synthetic import write_synthetic_tar

NUM_TARS, PER_TAR = 6, 600


def _files(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def _cli(inputs, out, tokenizer_path):
    return [sys.executable, "-m", "genlip_megatron.cli", "shards", "build", str(inputs), "--out", str(out),
            "--tokenizer", tokenizer_path, "--workers", "2", "--no-progress",
            "--prompt", "Describe the image."]


def test_killed_multi_worker_build_resumes_to_identical_output(tmp_path, build, tokenizer_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for t in range(NUM_TARS):
        write_synthetic_tar(str(inputs / f"{t}.tar"), PER_TAR, first=t * PER_TAR)
    reference, _ = build([inputs], out=str(tmp_path / "reference"))  # one worker, in process
    merge(reference)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(inputs, out, tokenizer_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("*.report.json")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the parent and both workers
    proc.wait()
    done_at_kill = len(list(out.glob("*.report.json")))
    assert 1 <= done_at_kill < NUM_TARS, "the kill must land in the middle of the run"
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(_cli(inputs, out, tokenizer_path), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({done_at_kill} already done)" in rerun.stdout or done_at_kill == 0
    got, expected = _files(out), _files(reference)
    assert sorted(got) == sorted(expected) and not [n for n in got if n.endswith(".tmp")]
    for name in expected:
        assert got[name] == expected[name], name
