"""SIGTERM to one rank of a real run: every rank finishes the step, saves, and exits to be requeued.

The run is an interleaved pipeline (PP2 x VPP2: two model chunks per rank) saving asynchronously,
so the signal path also covers VPP checkpoints and the async save's completion before exit.
"""

import os
import signal

from tiny_runs import RankProcesses, read_metrics, wait_for

from genlip_megatron.checkpoint.run_dir import iteration_of, read_latest
from genlip_megatron.training.faults import EXIT_REQUEUE


def test_sigterm_saves_within_one_step_and_exits_with_the_requeue_code(tmp_path):
    run_dir = str(tmp_path / "run")
    overrides = ["schedule.train_iters=10000", "checkpoint.save_interval=10000", f"checkpoint.dir={run_dir}",
                 "model.num_layers=4", "parallel.pipeline_model_parallel_size=2",
                 "parallel.virtual_pipeline_model_parallel_size=2", "checkpoint.async_save=true"]
    procs = RankProcesses(2, overrides, str(tmp_path / "logs"))
    wait_for(lambda: len(read_metrics(run_dir)) >= 2, procs, poll_s=0.01)
    last_logged = read_metrics(run_dir)[-1]["step"]
    procs.signal(signal.SIGTERM, ranks=[1])  # SLURM may signal ranks at slightly different times
    assert procs.wait(timeout=120) == [EXIT_REQUEUE, EXIT_REQUEUE], procs.tail()

    saved = iteration_of(read_latest(run_dir))
    # The step in flight when the signal lands finishes (+1); a signal arriving after that step's
    # flag exchange is seen by the next step (+2).
    assert last_logged < saved <= last_logged + 2
    assert read_metrics(run_dir)[-1]["step"] == saved
    files = os.listdir(os.path.join(run_dir, f"iter_{saved:07d}"))
    assert "metadata.json" in files and "config.yaml" in files  # the async save completed
    assert "exit code 75 asks the scheduler to requeue" in procs.log(0)
