"""`model.objective=aimv2` trains through the same trainer (model_setup provider + step loss switch):
the global loss under DP2 equals one rank's (exact weighting of the two global means, same prefix
draws), and PP2 (encoder | decoder) runs the trainer to the end with finite losses. (PP2 initialises
its stages from other RNG streams than PP1, so its losses are compared in the parity tests, which
load the same weights, not here.)"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))  # the trainer tests' tiny run

from multiproc import run_on_ranks
from tiny_runs import layout, train_in_pool

AIMV2 = ["model.objective=aimv2", "model.attention=dense", "model.decoder_hidden_size=24", "model.decoder_num_layers=2",
         "model.decoder_num_attention_heads=4", "model.decoder_ffn_hidden_size=48",
         "model.decoder_mrope_section=[1,1,1]", "model.aimv2_image_size=8", "model.layer_norm_eps=1e-5",
         "schedule.train_iters=3"]


def test_aimv2_objective_trains_and_dp2_gives_the_single_rank_losses():
    one = run_on_ranks(1, train_in_pool, AIMV2 + layout())[0]
    dp2 = run_on_ranks(2, train_in_pool, AIMV2 + layout())[0]
    pp2 = run_on_ranks(2, train_in_pool, AIMV2 + layout(pp=2), pp=2)[0]
    assert one["exit_code"] == dp2["exit_code"] == pp2["exit_code"] == 0
    assert sorted(one["losses"]) == sorted(dp2["losses"]) == sorted(pp2["losses"]) == [1, 2, 3]
    for step, loss in one["losses"].items():
        assert math.isfinite(loss) and math.isfinite(pp2["losses"][step])
        assert abs(dp2["losses"][step] - loss) <= 1e-6 * abs(loss), (step, dp2, one)


def test_aimv2_pp2_checkpoint_resume_reproduces_the_uninterrupted_loss(tmp_path):
    pp2 = AIMV2 + layout(pp=2)
    reference = run_on_ranks(2, train_in_pool, pp2, pp=2)[0]["losses"]
    saved = str(tmp_path / "saved")
    run_on_ranks(2, train_in_pool, pp2 + [f"checkpoint.dir={saved}", "checkpoint.save_interval=2"], pp=2)
    resumed = run_on_ranks(2, train_in_pool, pp2 + [f"checkpoint.dir={tmp_path / 'resumed'}",
                                                    f"checkpoint.load={saved}/iter_0000002"], pp=2)[0]
    assert sorted(resumed["losses"]) == [3], resumed
    assert resumed["losses"][3] == reference[3]
