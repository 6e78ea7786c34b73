"""Resume never ignores the user. A config that differs from the checkpoint's is refused with the
key-by-key difference unless `checkpoint.allow_changes` names the keys, and each allowed change does
one defined thing: a longer schedule runs as a fresh run of that length would (lr at every step), new
optimizer settings apply from the next step, a new dataset starts its own sampler state. A complete
run says so; no preset shares a default run folder."""

from __future__ import annotations

import json
import shutil

import pytest
from fmnist_run import TINY_REAL, build_dataset, genlip
from multiproc import RankError, run_on_ranks
from resume_runs import optimizer_after_resume
from tiny_runs import TINY, read_metrics, train_in_pool

from genlip_megatron.checkpoint.reader import CheckpointReader
from genlip_megatron.config.load import load_config, preset_names

BASE = ["schedule.warmup_fraction=0.25", "checkpoint.save_interval=4", "model.drop_path_rate=0.0"]


def _lrs(run_dir) -> dict[int, float]:
    return {m["step"]: m["lr"] for m in read_metrics(str(run_dir)) if "lr" in m}


def _train(overrides: list[str]) -> dict:
    result = run_on_ranks(2, train_in_pool, BASE + overrides, timeout=600)[0]
    assert result["exit_code"] == 0, result
    return result


def test_a_longer_train_iters_extends_the_schedule_as_a_fresh_run_of_that_length(tmp_path):
    short, fresh = tmp_path / "short", tmp_path / "fresh"
    _train(["schedule.train_iters=4", f"checkpoint.dir={short}"])
    extended = _train(["schedule.train_iters=8", f"checkpoint.dir={short}",
                       "checkpoint.allow_changes=[schedule.train_iters]"])
    assert sorted(extended["losses"]) == [5, 6, 7, 8]
    _train(["schedule.train_iters=8", f"checkpoint.dir={fresh}"])
    got, want = _lrs(short), _lrs(fresh)
    assert [got[s] for s in range(5, 9)] == [want[s] for s in range(5, 9)]  # exactly, step by step
    min_lr = load_config("tiny_cpu").optimizer.min_lr
    assert got[4] == min_lr  # the 4-step schedule had decayed to its end ...
    assert all(got[s] > 10 * min_lr for s in (5, 6, 7))  # ... and the extension does not idle there


def test_an_unallowed_change_is_refused_with_the_key_by_key_diff(tmp_path):
    run = tmp_path / "run"
    _train(["schedule.train_iters=4", f"checkpoint.dir={run}"])
    args = ["train", "tiny_cpu", *TINY, *BASE, f"checkpoint.dir={run}", "schedule.train_iters=8", "optimizer.lr=3.0e-3",
            "model.ffn_hidden_size=48"]
    done = genlip(args, cwd=str(tmp_path))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("resuming from")):]  # after import noise
    assert lines[0] == f"resuming from {run}/iter_0000004 with a config that differs from the checkpoint's:"
    assert lines[1:4] == ["  model.ffn_hidden_size: 64 (checkpoint) -> 48 (now)",
                          "  optimizer.lr: 0.002 (checkpoint) -> 0.003 (now)",
                          "  schedule.train_iters: 4 (checkpoint) -> 8 (now)"]
    assert "checkpoint.allow_changes=[optimizer.lr,schedule.train_iters]" in lines[4]
    assert lines[5].startswith("model.ffn_hidden_size cannot change when resuming")
    assert len(lines) == 6  # one copy, from rank 0's process
    assert [m["step"] for m in read_metrics(str(run))] == [1, 2, 3, 4]  # nothing trained
    # found before a job waits in the queue, and before a dry run says yes
    dry = genlip([*args, "--dry-run"], cwd=str(tmp_path))
    assert dry.returncode == 1 and dry.stderr.strip().splitlines()[-6:] == lines, dry.stderr[-2000:]
    submit = ["submit", *args[1:], "launch.gpus_per_node=2", "launch.cpus_per_rank=1", "--dry-run"]
    done = genlip(submit, cwd=str(tmp_path))
    assert done.returncode == 2
    assert [line.removeprefix("genlip submit: ") for line in done.stderr.strip().splitlines()[-6:]] == lines
    allowed = [*submit[:-1], "checkpoint.allow_changes=[optimizer.lr,schedule.train_iters]", "model.ffn_hidden_size=64",
               "--dry-run"]
    done = genlip(allowed, cwd=str(tmp_path))
    assert done.returncode == 0 and "#SBATCH" in done.stdout, done.stderr[-2000:]
    with pytest.raises(RankError, match="model.hidden_size cannot change when resuming"):
        run_on_ranks(2, train_in_pool, BASE + [f"checkpoint.dir={run}", "schedule.train_iters=4",
                                               "checkpoint.allow_changes=[model.hidden_size]"], timeout=600)


def test_changed_optimizer_settings_apply_from_the_next_step(tmp_path):
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    _train(["schedule.train_iters=8", f"checkpoint.dir={first}"])  # saves at 4 and 8
    new = ["optimizer.lr=3.0e-3", "optimizer.min_lr=1.0e-5", "optimizer.adam_beta2=0.99", "optimizer.adam_eps=1.0e-6",
           "optimizer.clip_grad=0.5", "optimizer.weight_decay=0.05"]
    allow = "checkpoint.allow_changes=[" + ",".join(o.split("=")[0] for o in new) + "]"
    resume = ["schedule.train_iters=8", f"checkpoint.load={first}/iter_0000004", *new, allow]
    state = run_on_ranks(2, optimizer_after_resume, BASE + resume, timeout=600)[0]
    assert state["iteration"] == 4 and state["num_steps"] == 4 and state["clip_grad"] == 0.5
    for group in state["groups"]:
        assert group["max_lr"] == 3.0e-3 and group["min_lr"] == 1.0e-5
        assert tuple(group["betas"]) == (0.9, 0.99) and group["eps"] == 1.0e-6
        assert group["weight_decay"] == pytest.approx(0.05 * group["wd_mult"])
    resumed = _train([*resume, f"checkpoint.dir={tmp_path / 'resumed'}"])
    assert sorted(resumed["losses"]) == [5, 6, 7, 8]
    _train(["schedule.train_iters=8", f"checkpoint.dir={fresh}", *new])
    got, want = _lrs(tmp_path / "resumed"), _lrs(fresh)
    assert [got[s] for s in range(5, 9)] == [want[s] for s in range(5, 9)]
    with pytest.raises(RankError, match="optimizer.lr: 0.002 \\(checkpoint\\) -> 0.003 \\(now\\)"):
        run_on_ranks(2, optimizer_after_resume, BASE + resume[:-1], timeout=600)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_datasets")
    first = build_dataset(str(root / "a"), train=24, test=4)
    second = build_dataset(str(root / "b"), train=40, test=4)
    return first["shards"], second["shards"]


def _real(data, run_dir, steps) -> list[str]:
    return [*TINY_REAL, "train.synthetic_data=false", f"data.manifest={data}", f"checkpoint.dir={run_dir}",
            f"schedule.train_iters={steps}", "checkpoint.save_interval=2", "train.global_batch_size=4"]


def test_a_new_manifest_starts_its_own_sampler_state(two_datasets, tmp_path):
    first, second = two_datasets
    original, moved, fresh = tmp_path / "original", tmp_path / "moved", tmp_path / "fresh"
    assert run_on_ranks(2, train_in_pool, _real(first, original, 4), timeout=600)[0]["exit_code"] == 0
    switch = _real(second, moved, 4) + [f"checkpoint.load={original}/iter_0000002"]
    with pytest.raises(RankError, match="data.manifest: .* \\(checkpoint\\) -> .* \\(now\\)"):
        run_on_ranks(2, train_in_pool, switch, timeout=600)
    resumed = run_on_ranks(2, train_in_pool, switch + ["checkpoint.allow_changes=[data.manifest]"], timeout=600)[0]
    assert sorted(resumed["losses"]) == [3, 4]
    assert run_on_ranks(2, train_in_pool, _real(second, fresh, 4), timeout=600)[0]["exit_code"] == 0
    # the steps after the switch read what a fresh run on the new dataset reads first
    samples = {m["step"]: m["samples"] for m in read_metrics(str(moved)) if "samples" in m}
    fresh_samples = {m["step"]: m["samples"] for m in read_metrics(str(fresh)) if "samples" in m}
    assert [samples[3], samples[4]] == [fresh_samples[1], fresh_samples[2]]
    assert (CheckpointReader(str(moved / "iter_0000004")).common["data"]
            == CheckpointReader(str(fresh / "iter_0000002")).common["data"])
    # while the original run had moved on in its own dataset
    assert (CheckpointReader(str(original / "iter_0000004")).common["data"]
            != CheckpointReader(str(fresh / "iter_0000002")).common["data"])


def test_the_same_shards_in_another_folder_are_no_change(two_datasets, tmp_path):
    """A dataset copied or moved (to scratch, another mount) resumes at its position, nothing to name."""
    first, _ = two_datasets
    original, resumed = tmp_path / "original", tmp_path / "resumed"
    assert run_on_ranks(2, train_in_pool, _real(first, original, 4), timeout=600)[0]["exit_code"] == 0
    copy = shutil.copytree(first, tmp_path / "scratch" / "copy")
    result = run_on_ranks(2, train_in_pool, _real(copy, resumed, 4) + [f"checkpoint.load={original}/iter_0000002"],
                          timeout=600)[0]
    assert sorted(result["losses"]) == [3, 4]
    before = {m["step"]: (m["samples"], m["loss"]) for m in read_metrics(str(original)) if "loss" in m}
    after = {m["step"]: (m["samples"], m["loss"]) for m in read_metrics(str(resumed)) if "loss" in m}
    assert [after[3], after[4]] == [before[3], before[4]]  # the same samples, the same losses: no restart
    assert (CheckpointReader(str(resumed / "iter_0000004")).common["data"]
            == CheckpointReader(str(original / "iter_0000004")).common["data"])


def test_a_complete_run_says_so_and_trains_nothing(tmp_path):
    run = tmp_path / "run"
    _train(["schedule.train_iters=4", f"checkpoint.dir={run}"])
    done = genlip(["train", "tiny_cpu", *TINY, *BASE, f"checkpoint.dir={run}", "schedule.train_iters=4"],
                  cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nothing to train" in done.stderr and "this run is complete" in done.stderr
    assert done.stderr.count(f"resumed from {run}/iter_0000004 at step 4") == 1  # rank 0's one line
    assert "checkpoint.allow_changes=[schedule.train_iters]" in done.stderr
    assert [m["step"] for m in read_metrics(str(run)) if "loss" in m] == [1, 2, 3, 4]
    done = genlip(["submit", "tiny_cpu", *TINY, *BASE, f"checkpoint.dir={run}", "schedule.train_iters=4",
                   "launch.gpus_per_node=2", "launch.cpus_per_rank=1", "--dry-run"], cwd=str(tmp_path))
    assert done.returncode == 2 and "this run is complete, nothing to train" in done.stderr, done.stderr[-2000:]


def test_no_preset_shares_a_default_run_folder():
    for name in preset_names():
        assert load_config(name).checkpoint.dir == "", name  # a forgotten checkpoint.dir resumes nothing
    assert json.dumps(load_config("tiny_cpu").checkpoint.allow_changes) == "[]"
