"""Context parallelism end to end: `genlip train`'s loop at CP2 follows the single-rank run.

The tiny model (fused attention, 32-token packs, each cut into 2 x 8 chunks) trains 4 steps from the
same seed at CP1 (one rank) and CP2 (two ranks over gloo, and two CP2 replicas at DP2): the loss of
every step, which after the first depends on every earlier update (so on every gradient), agrees
within 1e-5, also with DropPath on (CP ranks draw the same keep factors). A checkpoint saved at CP2
resumes at CP1 (and one saved at CP1 at CP2) with the next losses of the uninterrupted run. And
`genlip train` itself, as two real processes over gloo, trains at CP2 with the same losses.
"""

import pytest
from multiproc import run_on_ranks
from tiny_runs import RankProcesses, read_metrics, train_in_pool

TOLERANCE = 1e-5
FUSED = ["model.attention=fused", "schedule.train_iters=4"]


def _train(world: int, cp: int, overrides: list[str]) -> dict:
    settings = FUSED + [f"parallel.context_parallel_size={cp}"] + overrides
    result = run_on_ranks(world, train_in_pool, settings, cp=cp, timeout=300)[0]
    assert result["exit_code"] == 0, result
    return result


@pytest.fixture(scope="module")
def single_rank() -> dict:
    return _train(1, 1, [])["losses"]


@pytest.mark.parametrize("world", [2, 4])
def test_every_step_loss_at_cp2_equals_the_single_rank_run(single_rank, world):
    losses = _train(world, 2, [])["losses"]
    assert sorted(losses) == [1, 2, 3, 4]
    assert max(abs(losses[i] - single_rank[i]) for i in losses) <= TOLERANCE, (losses, single_rank)
    assert len({round(x, 3) for x in losses.values()}) == 4  # it trains: the loss moves every step


def test_the_ranks_of_a_context_parallel_group_drop_the_same_paths(single_rank):
    # DropPath draws one keep factor per packed sequence from the default generator: every CP rank
    # must draw the same ones, as the single rank does, or the halves of a sequence would disagree.
    drop = ["model.drop_path_rate=0.3"]
    single, split = _train(1, 1, drop)["losses"], _train(2, 2, drop)["losses"]
    assert max(abs(split[i] - single[i]) for i in single) <= TOLERANCE, (split, single)
    assert max(abs(single[i] - single_rank[i]) for i in single) > 1e-3  # paths were dropped


@pytest.mark.parametrize("save_cp, resume_cp", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_under_another_context_parallel_size(tmp_path, single_rank, save_cp, resume_cp):
    saved = _train(save_cp, save_cp, ["checkpoint.save_interval=2", f"checkpoint.dir={tmp_path / 'a'}"])
    assert sorted(saved["losses"]) == [1, 2, 3, 4]
    resumed = _train(resume_cp, resume_cp, [f"checkpoint.dir={tmp_path / 'b'}",
                                            f"checkpoint.load={tmp_path / 'a' / 'iter_0000002'}"])
    assert sorted(resumed["losses"]) == [3, 4], "the resumed run must start after the loaded step 2"
    for step in (3, 4):
        assert abs(resumed["losses"][step] - single_rank[step]) <= TOLERANCE, (resumed, single_rank)


def test_genlip_train_runs_context_parallel_as_two_real_processes(tmp_path, single_rank):
    run_dir = tmp_path / "run"
    procs = RankProcesses(2, FUSED + ["parallel.context_parallel_size=2", f"checkpoint.dir={run_dir}"],
                          str(tmp_path / "logs"))
    assert procs.wait() == [0, 0], procs.tail()
    assert "x CP2 x DP1" in procs.log(0)  # the banner states the layout
    losses = {m["step"]: m["loss"] for m in read_metrics(str(run_dir)) if "loss" in m}
    assert sorted(losses) == [1, 2, 3, 4]
    assert max(abs(losses[i] - single_rank[i]) for i in losses) <= TOLERANCE, (losses, single_rank)
