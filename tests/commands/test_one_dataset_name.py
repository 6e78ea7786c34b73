"""Train on a dataset named by its folder alone (relative, from one working directory); then evaluate,
caption, convert and submit from ANOTHER working directory, naming the same folder or the run, with no
tokenizer argument anywhere. The model's vocabulary is left unset and taken from the tokenizer."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from fmnist_run import TINY_REAL, genlip

from genlip_megatron.data.dataset_ref import load_tokenizer


@pytest.fixture(scope="module")
def trained(tiny_real_run):
    return tiny_real_run


def test_the_run_records_the_dataset_by_absolute_name_and_the_tokenizer_vocabulary(trained):
    saved = yaml.safe_load((trained["run"] / "iter_0000060" / "config.yaml").read_text())
    assert saved["data"]["manifest"] == os.path.join(trained["paths"]["shards"], "manifest.json")
    assert saved["model"]["vocab_size"] == load_tokenizer(trained["paths"]["shards"]).vocab_size


def test_eval_and_caption_from_another_directory_need_no_tokenizer(trained):
    run = str(trained["run"])
    test = trained["paths"]["test"]
    done = genlip(["eval", "--checkpoint", run, "--test", test, "--tasks", "caption_loss", "--limit-test", "4",
                   "--json", "out/results.json"], cwd=str(trained["elsewhere"]))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((trained["elsewhere"] / "out" / "results.json").read_text())
    assert results["model"]["caption_tokens"] > 0 and results["model"]["caption_loss"] > 0
    # the dataset folder itself names the samples of the run's held-out loss
    done = genlip(["eval", "--checkpoint", run, "--test", trained["paths"]["shards"], "--eval-iters", "2",
                   "--json", "out/held_out.json"], cwd=str(trained["elsewhere"]))
    assert done.returncode == 0, done.stderr[-2000:]
    held_out = json.loads((trained["elsewhere"] / "out" / "held_out.json").read_text())["model"]
    assert held_out["held_out_tokens"] > 0 and held_out["held_out_loss"] > 0
    image = os.path.join(os.path.dirname(test), "images", sorted(os.listdir(os.path.join(os.path.dirname(test),
                                                                                        "images")))[0])
    done = genlip(["caption", image, "--checkpoint", run, "--max-new-tokens", "4"], cwd=str(trained["elsewhere"]))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(image + "\t")


def test_convert_carries_the_dataset_tokenizer_and_submit_takes_the_folder(trained):
    elsewhere = trained["elsewhere"]
    done = genlip(["convert", "to-hf", str(trained["run"]), "hf/tiny"], cwd=str(elsewhere))
    assert done.returncode == 0, done.stderr[-2000:]
    shipped = elsewhere / "hf" / "tiny" / "tokenizer.json"
    assert shipped.read_bytes() == open(os.path.join(trained["paths"]["shards"], "tokenizer.json"), "rb").read()
    done = genlip(["submit", "tiny_cpu", f"data.manifest={trained['paths']['shards']}", "checkpoint.dir=runs/x",
                   "train.device=cpu", "launch.gpus_per_node=1", "model.vocab_size=null", *TINY_REAL[:5],
                   "--dry-run"], cwd=str(elsewhere))
    assert done.returncode == 0, done.stderr


def test_a_vocabulary_smaller_than_the_tokenizer_is_one_line_refusal(trained):
    done = genlip(["train", "tiny_cpu", f"data.manifest={trained['paths']['shards']}", "model.vocab_size=10",
                   "--dry-run"], cwd=str(trained["elsewhere"]))
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "model.vocab_size=10 is smaller than" in done.stderr
