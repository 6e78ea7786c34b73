"""Killing real `genlip train` ranks with SIGKILL loses nothing: the resumed run is bitwise identical.

The killed run is real processes (SIGKILL: no handler, no flush). The uninterrupted reference and the
resumed run execute in pooled worlds of the same layout with the same thread count, so the fp32
arithmetic is the same. Drop-path is on, so the restored RNG streams matter too.
"""

from multiproc import run_on_ranks
from tiny_runs import RankProcesses, layout, train_in_pool, wait_for

from genlip_megatron.checkpoint.run_dir import checkpoint_iterations, iteration_of, read_latest

TOTAL = 4  # schedule.train_iters; the kill comes after step N = 2
N = 2
EXACT = ["model.drop_path_rate=0.1", f"schedule.train_iters={TOTAL}"]


def _save_in_progress(run_dir: str):
    """(latest complete iteration, iteration being written) once latest >= N and a newer folder exists."""
    latest = read_latest(run_dir)
    if latest is None or iteration_of(latest) < N:
        return None
    done = iteration_of(latest)
    newer = [i for i in checkpoint_iterations(run_dir) if i > done]
    return (done, newer[0]) if newer else None


def _resume_and_compare(world: int, tp: int, pp: int, overrides: list[str], reference: dict,
                        resumed_from: int) -> None:
    """Resume in a pooled world (same layout, same threads) from the killed run's `latest`."""
    resumed = run_on_ranks(world, train_in_pool, overrides, tp=tp, pp=pp)[0]
    assert resumed["exit_code"] == 0
    assert sorted(resumed["losses"]) == list(range(resumed_from + 1, TOTAL + 1)), resumed
    for step, loss in resumed["losses"].items():
        assert loss == reference[step], f"step {step}: resumed {loss!r} != uninterrupted {reference[step]!r}"


def test_dp2_kill_during_save_keeps_latest_and_resume_is_bitwise_exact(tmp_path):
    reference = run_on_ranks(2, train_in_pool, EXACT + layout())[0]["losses"]
    run_dir = str(tmp_path / "run")
    overrides = EXACT + layout() + [f"checkpoint.dir={run_dir}", "checkpoint.save_interval=1"]
    procs = RankProcesses(2, overrides, str(tmp_path / "logs"))
    done, writing = wait_for(lambda: _save_in_progress(run_dir), procs)
    procs.kill()  # SIGKILL while iter_<writing> is being written

    assert read_latest(run_dir).endswith(f"iter_{done:07d}"), "latest moved to a checkpoint still being written"
    assert writing in checkpoint_iterations(run_dir) and done < writing < TOTAL + 1
    _resume_and_compare(2, 1, 1, overrides, reference, resumed_from=done)


def test_tp2_pp2_resume_after_kill9_is_bitwise_exact(tmp_path):
    reference = run_on_ranks(4, train_in_pool, EXACT + layout(tp=2, pp=2), tp=2, pp=2)[0]["losses"]
    run_dir = str(tmp_path / "run")
    overrides = EXACT + layout(tp=2, pp=2) + [f"checkpoint.dir={run_dir}", "checkpoint.save_interval=1"]
    procs = RankProcesses(4, overrides, str(tmp_path / "logs"))
    wait_for(lambda: (latest := read_latest(run_dir)) and iteration_of(latest) >= N, procs)
    procs.kill()
    done = iteration_of(read_latest(run_dir))
    assert done < TOTAL, "the run finished before it could be killed; nothing was resumed"
    _resume_and_compare(4, 2, 2, overrides, reference, resumed_from=done)
