"""The run directory: `latest` names only complete checkpoints, and pruning keeps the newest K."""

import os

import pytest

from genlip_megatron.checkpoint.run_dir import (
    checkpoint_iterations,
    checkpoint_path,
    iteration_of,
    prune,
    read_latest,
    write_latest,
)


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
