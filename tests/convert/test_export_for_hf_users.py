"""What a Hugging Face user finds in an exported folder: the tokenizer the model was trained with
(eos and pad named), a processor that resizes like training, a model card without site details, and
files everyone can read - never a folder that silently lacks its tokenizer."""

from __future__ import annotations

import json
import os
import stat

import pytest

from genlip_megatron.checkpoint.reader import ConversionError
from genlip_megatron.convert.to_hf import export_to_hf
from genlip_megatron.data.dataset_ref import load_tokenizer

SITE = ["launch.account=secret-acct", "launch.partition=gpu-secret", "launch.qos=vip-qos",
        "launch.setup=module load secret/1"]


@pytest.fixture(scope="module")
def exported(tiny_real_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    old = os.umask(0o077)  # a private umask: the export must still be readable by others
    try:
        summary = export_to_hf(str(tiny_real_run["run"]), str(out))
    finally:
        os.umask(old)
    return {"out": out, "summary": summary, **tiny_real_run}


def test_export_carries_the_dataset_tokenizer_with_eos_and_pad_named(exported):
    out = exported["out"]
    tokenizer = load_tokenizer(exported["paths"]["shards"])
    assert (out / "tokenizer.json").read_bytes() == open(tokenizer.path, "rb").read()
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == tokenizer.id_to_token(tokenizer.end_ids[-1])
    assert config["pad_token"] == tokenizer.id_to_token(tokenizer.pad_id)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out)
    assert hf.eos_token_id == tokenizer.end_ids[-1] and hf.pad_token_id == tokenizer.pad_id
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.end_ids[-1] and generation["pad_token_id"] == tokenizer.pad_id


def test_every_exported_file_is_world_readable_0644(exported):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in exported["out"].iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(exported["out"].stat().st_mode) == 0o755


def test_model_card_has_no_site_details(tiny_real_run, tmp_path):
    from fmnist_run import TINY_REAL, genlip

    run = tmp_path / "run"
    done = genlip(["train", "tiny_cpu", f"data.manifest={tiny_real_run['paths']['shards']}", f"checkpoint.dir={run}",
                   "schedule.train_iters=1", *TINY_REAL, *SITE, f"logging.tensorboard_dir={tmp_path}/secret-tb"],
                  cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    export_to_hf(str(run), str(tmp_path / "hf"))
    card = (tmp_path / "hf" / "README.md").read_text()
    for secret in ("secret", str(tmp_path), tiny_real_run["paths"]["shards"], "/tmp"):
        assert secret not in card, secret
    assert "shards" in card and "hidden_size: 32" in card  # the dataset by name, the model in full


def test_an_export_without_a_tokenizer_is_refused_unless_asked_for(exported, tmp_path):
    run = exported["run"]
    moved = tmp_path / "somewhere"
    os.rename(exported["paths"]["shards"], moved)  # the dataset moved away since training
    try:
        with pytest.raises(ConversionError, match="no tokenizer to export.*--tokenizer"):
            export_to_hf(str(run), str(tmp_path / "a"))
        assert not (tmp_path / "a").exists()
        export_to_hf(str(run), str(tmp_path / "b"), tokenizer=str(moved))  # the dataset's new place
        assert (tmp_path / "b" / "tokenizer.json").is_file()
        export_to_hf(str(run), str(tmp_path / "c"), without_tokenizer=True)
        assert not (tmp_path / "c" / "tokenizer.json").exists()
    finally:
        os.rename(moved, exported["paths"]["shards"])
