"""`parallel.overlap_param_gather` defers the distributed optimizer's all-gather to the next forward;
the checkpoint of a step must still hold that step's weights (training/param_sync.py)."""

from multiproc import run_on_ranks
from tiny_runs import layout, train_in_pool

from genlip_megatron.eval.loading import load_checkpoint_model


def _final_weights(run_dir: str, overlap: bool) -> tuple[dict, dict]:
    overrides = ["schedule.train_iters=3", f"checkpoint.dir={run_dir}", "checkpoint.save_interval=3",
                 f"parallel.overlap_param_gather={str(overlap).lower()}", *layout()]
    losses = run_on_ranks(2, train_in_pool, overrides)[0]["losses"]
    return losses, load_checkpoint_model(run_dir)[0].state_dict()


def test_dp2_checkpoint_with_deferred_param_gather_holds_the_updated_weights(tmp_path):
    plain_losses, plain = _final_weights(str(tmp_path / "plain"), overlap=False)
    overlap_losses, overlapped = _final_weights(str(tmp_path / "overlap"), overlap=True)
    assert overlap_losses == plain_losses
    assert plain.keys() == overlapped.keys()
    for name, weight in plain.items():
        assert (weight - overlapped[name]).abs().max() == 0, name
