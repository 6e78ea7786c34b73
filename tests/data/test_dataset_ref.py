"""A dataset has one name - its folder, or that folder's manifest.json - and its tokenizer is found from
the manifest, relative to the manifest's folder, from any working directory."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fmnist_run import build_dataset

from genlip_megatron.data.dataset_ref import (
    DatasetRefError,
    checked_vocab_size,
    dataset_tokenizer_file,
    load_tokenizer,
    manifest_file,
    tokenizer_file,
)
from genlip_megatron.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds")), train=8, test=2)


def test_folder_and_manifest_are_one_name_from_any_working_directory(dataset, tmp_path, monkeypatch):
    folder = dataset["shards"]
    want = os.path.join(folder, "manifest.json")
    monkeypatch.chdir(os.path.dirname(folder))
    assert manifest_file("shards") == manifest_file("shards/manifest.json") == want
    monkeypatch.chdir(tmp_path)
    assert manifest_file(folder) == manifest_file(want) == want
    with pytest.raises(DatasetRefError, match="no dataset here"):
        manifest_file("shards")  # relative to this other folder: not there


def test_tokenizer_is_found_relative_to_the_manifest_not_the_working_directory(dataset, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(dataset["shards"], moved)
    monkeypatch.chdir(tmp_path.parent)
    assert dataset_tokenizer_file(str(moved)) == str(moved / "tokenizer.json")
    manifest = json.loads((moved / "manifest.json").read_text())
    assert manifest["tokenizer"]["file"] == "tokenizer.json"  # relative: the dataset moves as one folder
    os.remove(moved / "tokenizer.json")
    with pytest.raises(DatasetRefError, match="tokenizer .* does not exist"):
        dataset_tokenizer_file(str(moved))


def test_a_tokenizer_argument_takes_a_file_an_hf_folder_or_a_dataset(dataset, tmp_path):
    hf = tmp_path / "hf-tokenizer"
    hf.mkdir()
    shutil.copy(dataset["tokenizer"], hf / "tokenizer.json")
    (hf / "tokenizer_config.json").write_text("{}")
    shard_tokenizer = os.path.join(dataset["shards"], "tokenizer.json")
    assert tokenizer_file(dataset["tokenizer"]) == dataset["tokenizer"]
    assert tokenizer_file(str(hf)) == str(hf / "tokenizer.json")
    assert tokenizer_file(dataset["shards"]) == shard_tokenizer
    assert tokenizer_file(os.path.join(dataset["shards"], "manifest.json")) == shard_tokenizer
    # and the three load the same tokenizer
    hashes = {load_tokenizer(ref).sha256 for ref in (dataset["tokenizer"], str(hf), dataset["shards"])}
    assert hashes == {Tokenizer.from_file(str(hf)).sha256} and len(hashes) == 1
    with pytest.raises(DatasetRefError, match="without tokenizer.json or manifest.json"):
        tokenizer_file(str(tmp_path))


def test_vocabulary_is_checked_against_the_tokenizer(dataset):
    tokenizer = load_tokenizer(dataset["shards"])
    assert checked_vocab_size(None, tokenizer) == tokenizer.vocab_size  # unset: taken from it
    assert checked_vocab_size(tokenizer.vocab_size + 7, tokenizer) == tokenizer.vocab_size + 7
    with pytest.raises(DatasetRefError) as exc:
        checked_vocab_size(tokenizer.vocab_size - 1, tokenizer)
    message = str(exc.value)
    assert "\n" not in message and f"model.vocab_size={tokenizer.vocab_size - 1}" in message
    assert f"{tokenizer.vocab_size} tokens" in message
