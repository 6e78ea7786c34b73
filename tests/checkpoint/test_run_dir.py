"""The run directory: `latest` names only complete checkpoints, pruning keeps the newest K, and
checkpoints and their configs are found the same way by training, conversion and evaluation."""

import os

import pytest

from genlip_megatron.checkpoint.run_dir import (
    CheckpointError,
    checkpoint_iterations,
    checkpoint_path,
    is_checkpoint,
    iteration_of,
    prune,
    read_latest,
    read_run_config,
    resolve_checkpoint,
    write_latest,
    write_run_config,
)
from genlip_megatron.config.load import config_to_dict, load_config


def _make(run_dir, *iterations):
    for i in iterations:
        os.makedirs(checkpoint_path(run_dir, i))


def test_latest_marker_round_trips_and_leaves_no_temporary_file(tmp_path):
    run_dir = str(tmp_path)
    assert read_latest(run_dir) is None
    write_latest(run_dir, 12)
    write_latest(run_dir, 40)
    assert read_latest(run_dir) == os.path.join(run_dir, "iter_0000040")
    assert iteration_of(read_latest(run_dir)) == 40
    assert sorted(os.listdir(run_dir)) == ["latest"]


def test_a_corrupt_marker_is_an_error_not_a_silent_fresh_start(tmp_path):
    (tmp_path / "latest").write_text("garbage\n")
    with pytest.raises(ValueError, match="not a checkpoint name"):
        read_latest(str(tmp_path))


def test_prune_keeps_the_newest_complete_ones_and_leaves_an_unfinished_newer_one(tmp_path):
    run_dir = str(tmp_path)
    _make(run_dir, 100, 200, 300, 400, 500)
    write_latest(run_dir, 400)  # 500 is a save that never completed
    assert prune(run_dir, keep_last=2) == [100, 200]
    assert checkpoint_iterations(run_dir) == [300, 400, 500]


def test_resolve_follows_the_marker_and_accepts_a_checkpoint_folder(tmp_path):
    run_dir = str(tmp_path)
    _make(run_dir, 7)
    folder = checkpoint_path(run_dir, 7)
    with pytest.raises(CheckpointError, match="nor a run directory"):
        resolve_checkpoint(folder)  # no dist_checkpointing metadata yet: not a checkpoint
    (tmp_path / "iter_0000007" / "metadata.json").write_text("{}")
    assert resolve_checkpoint(folder) == folder
    assert not is_checkpoint(run_dir)  # no marker yet
    for name in (".metadata", "common.pt", "config.yaml"):  # complete: every rank's files are there
        (tmp_path / "iter_0000007" / name).touch()
    write_latest(run_dir, 7)
    assert resolve_checkpoint(run_dir) == folder and is_checkpoint(run_dir)


def test_run_config_is_the_yaml_file_else_the_saved_dict(tmp_path):
    cfg = load_config("tiny_cpu", ["model.num_layers=3"])
    write_run_config(cfg, str(tmp_path))
    assert (tmp_path / "config.yaml").is_file()
    assert read_run_config(str(tmp_path)) == cfg
    os.remove(tmp_path / "config.yaml")
    assert read_run_config(str(tmp_path), saved=config_to_dict(cfg)) == cfg
    with pytest.raises(CheckpointError, match="no config.yaml"):
        read_run_config(str(tmp_path))
    with pytest.raises(CheckpointError, match="does not load"):
        read_run_config(str(tmp_path), saved={"model": {"no_such_key": 1}})
