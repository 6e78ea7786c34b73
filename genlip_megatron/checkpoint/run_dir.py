"""The run directory: the one place that knows its layout and the names of everything in it.

    <checkpoint.dir>/
        latest                 "iter_0001000\n": the newest COMPLETE checkpoint (atomic replace)
        iter_0001000/          megatron dist_checkpointing (torch_dist) + config.yaml
        iter_0000500/
        metrics.jsonl          one JSON line per step, and one per evaluation (rank 0)
        tensorboard/           (unless logging.tensorboard_dir says otherwise)
        save_now               touch it: the trainer checkpoints after the current step
        slurm/                 job scripts and logs (unless launch.log_dir says otherwise)

A checkpoint folder is complete only once `latest` names it: the marker is written by rank 0 after
every rank finished writing, as a temporary file that is fsynced and then renamed over the old
marker, so a crash at any instant leaves `latest` naming the old or the new checkpoint, never a
partial one. Every checkpoint folder carries the run's resolved config as `config.yaml`, written
after every rank's files and before the marker: when the marker is lost or names a folder that is
gone or partial (a copy, a hand edit, a file system that lost the rename), `latest_checkpoint`
falls back, with a warning, to the newest folder beside it that has its config and data files.

Training (checkpoint/sharded.py), conversion and evaluation (checkpoint/reader.py) all find
checkpoints and their configs through `resolve_checkpoint` and `read_run_config`.
Plain functions on paths; no process groups, no torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from genlip_megatron.config.load import ConfigError, config_from_dict, load_config, save_config
from genlip_megatron.config.schema import Config
from genlip_megatron.errors import InputError

LATEST = "latest"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAVE_NOW_FILE = "save_now"
TENSORBOARD_DIR = "tensorboard"
SLURM_DIR = "slurm"
# Written by megatron-core's dist_checkpointing into every checkpoint folder (not our name to choose).
DIST_METADATA_FILE = "metadata.json"
# Files megatron-core writes into every torch_dist checkpoint (besides the __*.distcp data files).
DIST_FILES = (DIST_METADATA_FILE, ".metadata", "common.pt")
_ITER_DIR = re.compile(r"^iter_(\d{7,})$")
log = logging.getLogger(__name__)


class CheckpointError(InputError):
    """A path that is not a usable checkpoint or run directory; str() is the one-line reason."""


# -- names -------------------------------------------------------------------------------------
def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def checkpoint_path(run_dir: str, iteration: int) -> str:
    return os.path.join(run_dir, checkpoint_name(iteration))


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS_FILE)


def save_now_path(run_dir: str) -> str:
    return os.path.join(run_dir, SAVE_NOW_FILE)


def tensorboard_dir(run_dir: str) -> str:
    return os.path.join(run_dir, TENSORBOARD_DIR)


def slurm_dir(run_dir: str) -> str:
    return os.path.join(run_dir, SLURM_DIR)


def config_path(checkpoint_folder: str) -> str:
    return os.path.join(checkpoint_folder, CONFIG_FILE)


def iteration_of(path: str) -> int:
    match = _ITER_DIR.match(os.path.basename(os.path.normpath(path)))
    if not match:
        raise ValueError(f"{path} is not an iter_XXXXXXX checkpoint folder")
    return int(match.group(1))


# -- the `latest` marker -------------------------------------------------------------------------
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


def has_checkpoint(run_dir: str) -> bool:
    """Whether `run_dir` holds a complete checkpoint (its `latest` marker exists)."""
    return os.path.isfile(os.path.join(run_dir, LATEST))


# -- finding checkpoints -------------------------------------------------------------------------
def is_checkpoint_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, DIST_METADATA_FILE))


def is_complete(folder: str) -> bool:
    """Whether every rank finished writing `folder` (its config is written after all of them)."""
    return all(os.path.isfile(os.path.join(folder, name)) for name in (*DIST_FILES, CONFIG_FILE))


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint of `run_dir`: the one `latest` names when it is complete, else
    (with a warning) the newest complete iter_* folder beside it. None when the run has none yet;
    CheckpointError when `latest` names one but no complete checkpoint is left."""
    marker = os.path.join(run_dir, LATEST)
    try:
        named = read_latest(run_dir)
        problem = None if named is None or is_complete(named) else (
            f"names {os.path.basename(named)}, which is " + ("incomplete" if os.path.isdir(named) else "missing"))
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        named, problem = None, f"is unreadable ({exc})"
    if named is not None and problem is None:
        return named
    complete = [i for i in checkpoint_iterations(run_dir) if is_complete(checkpoint_path(run_dir, i))]
    if not complete:
        if problem is None:
            return None
        raise CheckpointError(f"{marker} {problem}, and no complete checkpoint is beside it")
    chosen = checkpoint_path(run_dir, complete[-1])
    log.warning("%s %s; using %s, the newest complete checkpoint beside it", marker,
                problem or "is missing", os.path.basename(chosen))
    return chosen


def check_writable(run_dir: str) -> None:
    """Create `run_dir` if needed and prove a file can be written there; OSError (one line at the
    command line: read-only, no permission, full) before any training time is spent."""
    os.makedirs(run_dir, exist_ok=True)
    probe = os.path.join(run_dir, f".write-test.{os.getpid()}")
    with open(probe, "w") as f:
        f.write("ok\n")
    os.remove(probe)


def resolve_checkpoint(path: str) -> str:
    """A run directory (its latest complete checkpoint) or a checkpoint folder -> the checkpoint folder.

    Raises CheckpointError (one line) when `path` is neither.
    """
    if has_checkpoint(path) or checkpoint_iterations(path):
        path = latest_checkpoint(path) or path
    if not is_checkpoint_folder(path):
        raise CheckpointError(f"{path}: not a megatron distributed checkpoint (no {DIST_METADATA_FILE}) "
                              f"nor a run directory with a `{LATEST}` marker")
    return path


def is_checkpoint(path: str) -> bool:
    """Whether `path` is a run directory with a checkpoint, or a checkpoint folder."""
    try:
        resolve_checkpoint(path)
        return True
    except (CheckpointError, ValueError):
        return False


# -- the run's config ----------------------------------------------------------------------------
def write_run_config(cfg: Config, checkpoint_folder: str) -> None:
    save_config(cfg, config_path(checkpoint_folder))


def read_run_config(checkpoint_folder: str, saved: dict | None = None) -> Config:
    """The training Config of a checkpoint folder: its config.yaml, else `saved` (the config dict
    stored in the checkpoint's common state). Raises CheckpointError when neither loads."""
    path = config_path(checkpoint_folder)
    try:
        if os.path.isfile(path):
            return load_config(path)
        if isinstance(saved, dict):
            return config_from_dict(saved)
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint_folder}: its config does not load: "
                              f"{str(exc).splitlines()[0]}") from None
    raise CheckpointError(f"{checkpoint_folder}: no {CONFIG_FILE} and no saved config")


# -- housekeeping --------------------------------------------------------------------------------
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
