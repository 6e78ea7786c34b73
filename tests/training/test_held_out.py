"""Evaluation during training: a run with data.eval_manifest logs, every train.eval_interval steps,
a held-out loss equal to an offline `genlip eval` of the checkpoint of that step on the same samples
(1e-5), and evaluating changes nothing of the training stream (bitwise, drop-path on)."""

from __future__ import annotations

import json
import os

import pytest
from fmnist_run import TINY_REAL, build_dataset
from held_out_runs import held_out_after_load
from multiproc import run_on_ranks
from tiny_runs import train_in_pool

from genlip_megatron.checkpoint.reader import CheckpointReader
from genlip_megatron.cli import main
from genlip_megatron.eval.held_out import held_out_loss
from genlip_megatron.eval.loading import load_checkpoint_model

TOLERANCE = 1e-5
STEPS, EVERY = 4, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.merge import merge
    from data_tools.unit import BuildSettings

    root = tmp_path_factory.mktemp("held_out")
    paths = build_dataset(str(root), train=32, test=16)
    paths["eval"] = str(root / "eval_shards")
    settings = BuildSettings(caption=CaptionSettings(fields=("caption",)))
    assert not run_build([paths["test"]], paths["eval"], paths["tokenizer"], settings, "describe",
                         progress=False)["failed"]
    merge(paths["eval"])
    return paths


def _overrides(data, run_dir, with_eval: bool) -> list[str]:
    return [*TINY_REAL, "train.synthetic_data=false", f"data.manifest={data['shards']}", "model.drop_path_rate=0.1",
            f"schedule.train_iters={STEPS}", f"checkpoint.dir={run_dir}", f"checkpoint.save_interval={EVERY}",
            "train.global_batch_size=4", "train.micro_batch_size=1",
            *([f"data.eval_manifest={data['eval']}", f"train.eval_interval={EVERY}", "train.eval_iters=2"]
              if with_eval else [])]


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same DP2 run with and without evaluation."""
    out = {}
    for name, with_eval in (("with_eval", True), ("without", False)):
        run_dir = tmp_path_factory.mktemp(name) / "run"
        out[name] = run_on_ranks(2, train_in_pool, _overrides(data, run_dir, with_eval), timeout=600)[0]
        out[name]["run_dir"] = run_dir
    return out


def test_logged_held_out_loss_equals_offline_eval_of_the_checkpoint(runs, data, tmp_path):
    result = runs["with_eval"]
    assert result["exit_code"] == 0 and sorted(result["eval_losses"]) == [2, 4]
    run_dir = result["run_dir"]
    logged = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if "eval/caption_loss" in line]
    assert [r["step"] for r in logged] == [2, 4]
    for record in logged:
        assert record["eval/caption_loss"] == result["eval_losses"][record["step"]]
        assert record["eval/samples"] > 0 and record["eval/tokens"] > record["eval/samples"]
    # the checkpoint of step 2, offline, in one process, through the plain-torch model
    model, cfg = load_checkpoint_model(str(run_dir / "iter_0000002"))
    offline = held_out_loss(model, cfg, data["eval"])
    assert abs(offline["held_out_loss"] - result["eval_losses"][2]) < TOLERANCE
    assert offline["held_out_tokens"] == logged[0]["eval/tokens"]
    assert offline["held_out_samples"] == logged[0]["eval/samples"]
    # and the command, from the run directory (latest = step 4), naming the eval dataset by its folder
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--test", data["eval"], "--json", str(out)]) == 0
    command = json.loads(out.read_text())["model"]
    assert abs(command["held_out_loss"] - result["eval_losses"][4]) < TOLERANCE
    assert result["eval_losses"][4] < result["eval_losses"][2]  # it measures something that moves


@pytest.mark.parametrize("layout", [dict(tp=2), dict(pp=2), dict(cp=2)], ids=lambda d: "".join(f"{k}{v}" for k, v in d.items()))
def test_the_held_out_loss_is_the_same_under_another_layout(runs, data, layout):
    """The DP2 run's logged loss at step 2 == its checkpoint evaluated by the loop at TP2, PP2 or CP2."""
    result = runs["with_eval"]
    keys = {"tp": "tensor_model_parallel_size", "pp": "pipeline_model_parallel_size", "cp": "context_parallel_size"}
    overrides = _overrides(data, result["run_dir"], with_eval=True) + [
        "checkpoint.dir=", f"checkpoint.load={result['run_dir'] / 'iter_0000002'}", "checkpoint.finetune=true",
        *(f"parallel.{keys[k]}={v}" for k, v in layout.items())]
    got = run_on_ranks(2, held_out_after_load, overrides, timeout=600, **layout)
    assert len({g["loss"] for g in got}) == 1  # every rank gets the global number
    logged = [json.loads(line) for line in open(result["run_dir"] / "metrics.jsonl") if "eval/caption_loss" in line][0]
    assert abs(got[0]["loss"] - result["eval_losses"][2]) < TOLERANCE
    assert (got[0]["tokens"], got[0]["samples"]) == (logged["eval/tokens"], logged["eval/samples"])


def test_evaluating_leaves_the_training_stream_and_its_resume_state_unchanged(runs):
    with_eval, without = runs["with_eval"], runs["without"]
    assert without["eval_losses"] == {}
    assert with_eval["losses"] == without["losses"]  # bitwise, every step, drop-path on
    for step in (EVERY, STEPS):
        a = CheckpointReader(str(with_eval["run_dir"] / f"iter_{step:07d}")).common
        b = CheckpointReader(str(without["run_dir"] / f"iter_{step:07d}")).common
        assert a["data"] == b["data"] and a["counters"] == b["counters"]


def test_eval_shows_in_the_demo_report_curve_data(runs):
    from genlip_megatron.eval.report import read_eval_losses, read_losses

    metrics = os.path.join(runs["with_eval"]["run_dir"], "metrics.jsonl")
    steps, losses = read_losses(metrics)
    assert steps == list(range(1, STEPS + 1))  # evaluation lines are not training steps
    eval_steps, eval_losses = read_eval_losses(metrics)
    assert eval_steps == [2, 4] and eval_losses == [runs["with_eval"]["eval_losses"][s] for s in (2, 4)]


def test_end_of_run_zero_shot_and_probe_equal_genlip_eval_of_the_final_checkpoint(data, tmp_path, capsys):
    from tiny_runs import RankProcesses, read_metrics

    run_dir = tmp_path / "run"
    labelled = [f"data.eval_labelled={data['test']}", f"data.eval_zero_shot={data['zero_shot']}",
                f"data.eval_probe_train={data['train']}", "train.eval_labelled_images=12"]
    procs = RankProcesses(1, [*_overrides(data, run_dir, with_eval=False), *labelled], str(tmp_path / "logs"))
    assert procs.wait() == [0], procs.tail()
    logged = [m for m in read_metrics(str(run_dir)) if "eval/zero_shot_sum" in m]
    assert len(logged) == 1 and logged[0]["step"] == STEPS
    assert "end-of-run evaluation after step 4" in procs.log(0)
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--test", data["test"], "--zero-shot", data["zero_shot"],
                 "--train", data["train"], "--limit-test", "12", "--limit-train", "12",
                 "--tasks", "zero_shot,linear_probe", "--json", str(out)]) == 0
    offline = json.loads(out.read_text())["model"]
    for key in ("zero_shot_sum", "zero_shot_mean", "linear_probe"):
        assert logged[0][f"eval/{key}"] == offline[key], key
