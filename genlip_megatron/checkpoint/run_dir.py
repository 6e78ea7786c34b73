"""The run directory's layout: checkpoint folders, the `latest` marker, and pruning.

    <checkpoint.dir>/
        latest                 "iter_0001000\n": the newest COMPLETE checkpoint (atomic replace)
        iter_0001000/          megatron dist_checkpointing (torch_dist) + config.yaml
        iter_0000500/
        metrics.jsonl          one JSON line per step (rank 0)
        tensorboard/

A checkpoint folder is complete only once `latest` names it: the marker is written by rank 0 after
every rank finished writing, as a temporary file that is fsynced and then renamed over the old
marker, so a crash at any instant leaves `latest` naming the old or the new checkpoint, never a
partial one. Plain functions on paths; no process groups here.
"""

from __future__ import annotations

import os
import re
import shutil

LATEST = "latest"
_ITER_DIR = re.compile(r"^iter_(\d{7,})$")


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def checkpoint_path(run_dir: str, iteration: int) -> str:
    return os.path.join(run_dir, checkpoint_name(iteration))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_latest(run_dir: str, iteration: int) -> None:
    """Point `latest` at iter_<iteration>, atomically (temp file, fsync, rename, fsync dir)."""
    tmp = os.path.join(run_dir, f".{LATEST}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(checkpoint_name(iteration) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(run_dir, LATEST))
    _fsync_dir(run_dir)


def read_latest(run_dir: str) -> str | None:
    """Path of the checkpoint `latest` names, or None when there is no marker."""
    try:
        with open(os.path.join(run_dir, LATEST)) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    if not _ITER_DIR.match(name):
        raise ValueError(f"{os.path.join(run_dir, LATEST)} holds {name!r}, not a checkpoint name")
    return os.path.join(run_dir, name)


def iteration_of(path: str) -> int:
    match = _ITER_DIR.match(os.path.basename(os.path.normpath(path)))
    if not match:
        raise ValueError(f"{path} is not an iter_XXXXXXX checkpoint folder")
    return int(match.group(1))


def checkpoint_iterations(run_dir: str) -> list[int]:
    """Iterations of every iter_* folder present (complete or not), ascending."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(int(m.group(1)) for m in map(_ITER_DIR.match, os.listdir(run_dir)) if m)


def prune(run_dir: str, keep_last: int) -> list[int]:
    """Delete complete checkpoints older than the newest `keep_last`; return the deleted iterations.

    Folders newer than `latest` (a save that never completed) are left alone: the next save of that
    iteration replaces them.
    """
    latest = read_latest(run_dir)
    if latest is None:
        return []
    newest = iteration_of(latest)
    complete = [i for i in checkpoint_iterations(run_dir) if i <= newest]
    doomed = complete[:-keep_last] if keep_last > 0 else []
    for iteration in doomed:
        shutil.rmtree(checkpoint_path(run_dir, iteration), ignore_errors=True)
    return doomed
