"""A damaged run directory, a full disk and read-only folders: one line each, nothing lost.

- `latest` naming a missing or partial checkpoint (or holding garbage) falls back, with a warning,
  to the newest complete checkpoint beside it, for conversion, evaluation and training resume.
- A save that does not fit says "No space left on device" in one line naming the folder, and the
  previous checkpoint (and `latest`) stay intact; with space again, the same command resumes and
  completes. Real full disks come from a small tmpfs (needs mount rights, as root in CI); the same
  paths are also driven without one by reporting no free space / failing the writer in a pooled rank.
- A read-only run folder fails at start, in one line; a read-only checkpoint converts fine; a
  read-only output folder is refused in one line.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest
from crafted_checkpoints import train_tiny, train_tiny_cli
from harness import run_command, snapshot
from multiproc import run_on_ranks

from genlip_megatron.checkpoint import run_dir as layout
from genlip_megatron.checkpoint.run_dir import CheckpointError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_dir")
    assert run_on_ranks(1, train_tiny, str(root / "run"), 4)[0]["exit_code"] == 0
    return root / "run"


def _copy(genuine, tmp_path):
    return shutil.copytree(genuine, tmp_path / "run")


# ---- latest ---------------------------------------------------------------------------------------
def _fake_checkpoint(run_dir, iteration: int, complete: bool = True) -> str:
    path = layout.checkpoint_path(str(run_dir), iteration)
    os.makedirs(path)
    for name in layout.DIST_FILES + ((layout.CONFIG_FILE,) if complete else ()):
        open(os.path.join(path, name), "w").close()
    return path


@pytest.mark.parametrize("latest,expected", [
    ("iter_0000006", 4),  # names a folder that is gone
    ("iter_0000005", 4),  # names a partial folder (no config.yaml: some rank never finished)
    ("../../etc", 4),  # not a checkpoint name
    ("\x00\xff garbage", 4),
    (None, 4),  # the marker itself is gone
])
def test_latest_falls_back_to_the_newest_complete_checkpoint_with_a_warning(tmp_path, caplog, latest, expected):
    for iteration, complete in ((2, True), (4, True), (5, False), (7, False)):
        _fake_checkpoint(tmp_path, iteration, complete)
    if latest is not None:
        (tmp_path / "latest").write_bytes(latest.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING):
        chosen = layout.latest_checkpoint(str(tmp_path))
    assert chosen == layout.checkpoint_path(str(tmp_path), expected)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "iter_0000004, the newest complete checkpoint beside it" in record.getMessage()
    assert layout.resolve_checkpoint(str(tmp_path)) == chosen


def test_a_complete_latest_is_used_without_a_warning(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    (tmp_path / "latest").write_text("iter_0000002\n")
    with caplog.at_level(logging.WARNING):
        assert layout.latest_checkpoint(str(tmp_path)).endswith("iter_0000002")
    assert not caplog.records


def test_no_complete_checkpoint_left_is_one_line(tmp_path):
    _fake_checkpoint(tmp_path, 3, complete=False)
    (tmp_path / "latest").write_text("iter_0000003\n")
    with pytest.raises(CheckpointError) as refused:
        layout.latest_checkpoint(str(tmp_path))
    assert str(refused.value) == (f"{tmp_path}/latest names iter_0000003, which is incomplete, and no complete "
                                  "checkpoint is beside it")
    assert layout.latest_checkpoint(str(tmp_path / "empty")) is None  # a new run: nothing to resume


def test_conversion_of_a_run_whose_latest_is_missing_uses_the_complete_one(genuine, tmp_path, caplog):
    run_dir = _copy(genuine, tmp_path)
    shutil.rmtree(run_dir / "iter_0000004")
    with caplog.at_level(logging.WARNING):
        outcome = run_command(["convert", "to-hf", run_dir, tmp_path / "hf", "--without-tokenizer"])
    assert outcome.code == 0, outcome.stderr
    assert "iter_0000002, the newest complete checkpoint beside it" in caplog.text
    assert '"iteration": 2' in outcome.stdout


def _resume(run_dir: str, steps: int) -> dict:
    return train_tiny(run_dir, steps)


def test_training_resumes_from_the_complete_checkpoint_when_latest_names_a_partial_one(genuine, tmp_path):
    run_dir = _copy(genuine, tmp_path)
    os.remove(run_dir / "iter_0000004" / layout.CONFIG_FILE)  # as if a rank died before the end
    result = run_on_ranks(1, _resume, str(run_dir), 6)[0]
    assert result["exit_code"] == 0 and sorted(result["losses"]) == [3, 4, 5, 6]
    assert (run_dir / "latest").read_text().strip() == "iter_0000006"


# ---- full disk ------------------------------------------------------------------------------------
def _no_free_space(run_dir: str, steps: int) -> str:
    """Pool rank: train with every free-space query answering 0 bytes; the error it ends with."""
    from genlip_megatron.checkpoint import save_guard

    real = save_guard.shutil.disk_usage
    save_guard.shutil.disk_usage = lambda path: real(path)._replace(free=0)
    try:
        train_tiny(run_dir, steps)
    except OSError as exc:
        from genlip_megatron.errors import describe_os_error

        return describe_os_error(exc)
    finally:
        save_guard.shutil.disk_usage = real
    return ""


def _writer_fails(run_dir: str, steps: int) -> str:
    """Pool rank: the checkpoint writer's worker reports ENOSPC, as megatron-core's does."""
    from megatron.core import dist_checkpointing

    from genlip_megatron.checkpoint import sharded

    def full(state, path, **kwargs):
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "__0_0.distcp"), "w").close()
        raise RuntimeError("Worker failure: [Errno 28] No space left on device")

    real = dist_checkpointing.save
    sharded.dist_checkpointing.save = full
    try:
        train_tiny(run_dir, steps)
    except OSError as exc:
        from genlip_megatron.errors import describe_os_error

        return describe_os_error(exc)
    finally:
        sharded.dist_checkpointing.save = real
    return ""


@pytest.mark.parametrize("world", [1, 2])
def test_a_save_that_does_not_fit_is_one_line_on_every_rank_and_keeps_the_previous_checkpoint(
        genuine, tmp_path, world):
    run_dir = _copy(genuine, tmp_path)
    before = snapshot(run_dir / "iter_0000004")
    messages = run_on_ranks(world, _no_free_space, str(run_dir), 6)
    assert len(set(messages)) == 1, messages  # every rank stops with the same verdict
    assert messages[0].startswith(f"No space left on device: saving checkpoint {run_dir}/iter_0000006 needs about")
    assert messages[0].endswith(f"earlier checkpoints are intact (ENOSPC): {run_dir}") and "\n" not in messages[0]
    assert snapshot(run_dir / "iter_0000004") == before
    assert (run_dir / "latest").read_text().strip() == "iter_0000004"
    assert not (run_dir / "iter_0000006").exists()


def test_a_write_that_fails_midway_is_one_line_and_its_partial_folder_is_removed(genuine, tmp_path):
    run_dir = _copy(genuine, tmp_path)
    before = snapshot(run_dir / "iter_0000004")
    [message] = run_on_ranks(1, _writer_fails, str(run_dir), 6)
    assert message == (f"No space left on device while saving checkpoint {run_dir}/iter_0000006 (removed; "
                       "earlier checkpoints are intact) (ENOSPC)")
    assert not (run_dir / "iter_0000006").exists()
    assert snapshot(run_dir / "iter_0000004") == before and (run_dir / "latest").read_text() == "iter_0000004\n"


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs folder; unmounted afterwards. Skips without mount rights."""
    mounted = []

    def mount(size: str, ro: bool = False, at=None):
        point = at or tmp_path / f"mnt{len(mounted)}"
        point.mkdir(exist_ok=True)
        options = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the pooled tests "
                        "above drive the same code paths")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)




def _error_lines(done) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.startswith("genlip train: error:")]


@pytest.mark.slow
def test_real_full_disk_at_save_is_one_line_and_the_run_completes_once_there_is_room(genuine, tmp_path, tmpfs):
    disk = tmpfs("1100k")  # room for one checkpoint of the tiny model, not two
    run_dir = disk / "run"
    done = train_tiny_cli(run_dir, 4)
    [line] = _error_lines(done)
    assert done.returncode == 2 and "No space left on device" in line and str(run_dir) in line, done.stderr
    assert (run_dir / "latest").read_text() == "iter_0000002\n" and layout.is_complete(str(run_dir / "iter_0000002"))
    before = snapshot(run_dir / "iter_0000002")
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # the operator frees space
    assert snapshot(run_dir / "iter_0000002") == before
    done = train_tiny_cli(run_dir, 4)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "latest").read_text() == "iter_0000004\n"


@pytest.mark.slow
def test_real_full_disk_while_writing_is_one_line_and_leaves_no_partial_folder(tmp_path, tmpfs):
    disk = tmpfs("800k")  # passes the size estimate of the first checkpoint, not its real size
    run_dir = disk / "run"
    done = train_tiny_cli(run_dir, 2)
    [line] = _error_lines(done)
    assert done.returncode == 2 and line.startswith("genlip train: error: No space left on device while saving "
                                                    f"checkpoint {run_dir}/iter_0000002"), done.stderr
    assert not (run_dir / "iter_0000002").exists() and not (run_dir / "latest").exists()


def test_read_only_run_folder_fails_at_start_in_one_line(genuine, tmp_path, tmpfs):
    disk = tmpfs("8m")
    shutil.copytree(genuine, disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    done = train_tiny_cli(disk / "run", 6)
    [line] = _error_lines(done)
    assert done.returncode == 2 and "Read-only file system (EROFS)" in line and str(disk / "run") in line

    # ... while reading a checkpoint from it works, and a read-only output folder is one line
    outcome = run_command(["convert", "to-hf", disk / "run", tmp_path / "hf", "--without-tokenizer"])
    assert outcome.code == 0, outcome.stderr
    outcome = run_command(["convert", "to-timm", disk / "run", disk / "timm"])
    outcome.refused_in_one_line("Read-only file system")
