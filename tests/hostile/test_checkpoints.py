"""A crafted checkpoint folder never runs code, never hangs, never exhausts memory; every command
that opens a checkpoint refuses it in one line naming the file, and works again once it is repaired.

The crafted folders are copies of a genuine tiny training run (crafted_checkpoints.py). Commands:
convert to-hf / to-timm, eval and caption run as `genlip ...` in this process (harness.run_command);
training resume runs the real trainer in a pooled rank, and once per payload as a `genlip train`
process.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from crafted_checkpoints import (
    INCOMPLETE,
    NEIGHBOURS,
    PAYLOADS,
    resume_error,
    train_tiny,
    train_tiny_cli,
)
from harness import PEAK_MB_LIMIT, Marker, run_command, snapshot
from multiproc import run_on_ranks
from PIL import Image

from genlip_megatron.checkpoint.reader import CheckpointReader
from genlip_megatron.checkpoint.run_dir import CheckpointError
from genlip_megatron.data.tokenizer import train_bpe

pytestmark = pytest.mark.timeout(300)
STEPS = 4
LATEST = f"iter_{STEPS:07d}"


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A finished tiny run (checkpoints at steps 2 and 4), a tokenizer, an image and a test JSONL."""
    root = tmp_path_factory.mktemp("genuine")
    result = run_on_ranks(1, train_tiny, str(root / "run"), STEPS)[0]
    assert result["exit_code"] == 0
    train_bpe(["a photo of a bag.", "describe it"] * 20, 280, str(root / "tokenizer.json"), min_frequency=1)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "test.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a photo of a bag.", "label": 0}))
    return root


def _commands(genuine, run_dir, out) -> dict[str, list]:
    return {
        "to-hf": ["convert", "to-hf", run_dir, out, "--tokenizer", genuine / "tokenizer.json"],
        "to-timm": ["convert", "to-timm", run_dir, out],
        "eval": ["eval", "--checkpoint", run_dir, "--test", genuine / "test.jsonl", "--tokenizer",
                 genuine / "tokenizer.json", "--tasks", "caption_loss"],
        "caption": ["caption", genuine / "a.png", "--checkpoint", run_dir, "--tokenizer",
                    genuine / "tokenizer.json", "--max-new-tokens", "2"],
    }


def _crafted(genuine, tmp_path, craft):
    run_dir = tmp_path / "run"
    shutil.copytree(genuine / "run", run_dir)
    marker = Marker(tmp_path)
    named = craft(str(run_dir / LATEST), marker)
    return run_dir, marker, named


@pytest.mark.parametrize("craft", PAYLOADS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("command", ["to-hf", "to-timm", "eval", "caption"])
def test_crafted_checkpoint_is_refused_by_every_reading_command_and_works_once_repaired(
        genuine, tmp_path, craft, command):
    run_dir, marker, named = _crafted(genuine, tmp_path, craft)
    before = snapshot(run_dir)
    out = tmp_path / "out"
    argv = _commands(genuine, run_dir, out)[command]

    refused = run_command(argv)
    refused.refused_in_one_line(named)
    assert not marker.fired, "the crafted checkpoint ran code"
    assert refused.peak_mb < PEAK_MB_LIMIT
    assert snapshot(run_dir) == before, "a refused read changed the checkpoint"
    assert not out.exists(), "a refused conversion left an output folder"
    assert sorted(os.listdir(tmp_path)) == ["run"], "something was written beside the run"

    shutil.rmtree(run_dir / LATEST)
    shutil.copytree(genuine / "run" / LATEST, run_dir / LATEST)
    assert run_command(argv).code == 0, "the repaired checkpoint does not work"
    assert not marker.fired


@pytest.mark.parametrize("craft", NEIGHBOURS, ids=lambda f: f.__name__)
def test_malformed_checkpoint_is_refused_by_the_reader_in_one_line(genuine, tmp_path, craft):
    run_dir, marker, named = _crafted(genuine, tmp_path, craft)
    before = snapshot(run_dir)
    # The checkpoint folder itself: through the run folder, a missing file makes it incomplete and
    # the reader falls back to the complete one beside it (test_run_folder_faults.py).
    refused = run_command(["convert", "to-hf", run_dir / LATEST, tmp_path / "out", "--tokenizer",
                           genuine / "tokenizer.json"])
    refused.refused_in_one_line(named)
    assert not marker.fired
    assert refused.peak_mb < PEAK_MB_LIMIT
    assert snapshot(run_dir) == before
    assert not (tmp_path / "out").exists()


def test_reader_reads_every_stored_object_through_the_plain_data_check(genuine):
    reader = CheckpointReader(str(genuine / "run"))
    assert reader._reader.check_objects() > 0  # rng_state and the layers' extra state were checked


@pytest.mark.parametrize("craft", [c for c in PAYLOADS + NEIGHBOURS if c not in INCOMPLETE],
                         ids=lambda f: f.__name__)
def test_training_resume_refuses_a_crafted_checkpoint(genuine, tmp_path, craft):
    run_dir, marker, named = _crafted(genuine, tmp_path, craft)
    before = snapshot(run_dir)
    message = run_on_ranks(1, resume_error, str(run_dir), STEPS + 2)[0]
    assert message and "\n" not in message, f"not refused in one line: {message!r}"
    assert named in message
    assert not marker.fired
    assert snapshot(run_dir) == before




@pytest.mark.slow
@pytest.mark.parametrize("craft", PAYLOADS, ids=lambda f: f.__name__)
def test_genlip_train_refuses_a_crafted_checkpoint_in_one_line_and_resumes_once_repaired(
        genuine, tmp_path, craft):
    run_dir, marker, named = _crafted(genuine, tmp_path, craft)
    done = train_tiny_cli(run_dir, STEPS + 2)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and named in errors[0] and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not marker.fired
    assert not (run_dir / f"iter_{STEPS + 2:07d}").exists()

    shutil.rmtree(run_dir / LATEST)
    shutil.copytree(genuine / "run" / LATEST, run_dir / LATEST)
    done = train_tiny_cli(run_dir, STEPS + 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "latest").read_text().strip() == f"iter_{STEPS + 2:07d}"


def test_checkpoint_error_is_one_line(genuine, tmp_path):
    run_dir, _, _ = _crafted(genuine, tmp_path, PAYLOADS[0])
    with pytest.raises(CheckpointError) as refused:
        CheckpointReader(str(run_dir))
    assert "\n" not in str(refused.value)
