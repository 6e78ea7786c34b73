"""A merged dataset: global indexing across shards, tokenizer identity, refusing mixed tokenizers."""

import json
import os
import shutil

import numpy as np
import pytest

from data_tools.build import BuildError, run_build
from data_tools.merge import merge
from data_tools.synthetic import make_caption, write_synthetic_tar
from data_tools.unit import BuildSettings
from genlip_megatron.data.manifest import open_dataset
from genlip_megatron.data.shards import ShardError
from genlip_megatron.data.tokenizer import Tokenizer, train_bpe


def _build(tmp_path, name, vocab, sizes=(30, 0, 45)):
    tok = str(tmp_path / f"{name}-tokenizer.json")
    train_bpe((make_caption(i) for i in range(500)), vocab, tok, min_frequency=1)
    inputs = tmp_path / f"{name}-in"
    inputs.mkdir()
    first = 0
    for t, n in enumerate(sizes):
        if n:
            write_synthetic_tar(str(inputs / f"{t}.tar"), n, first=first)
        else:  # a tar whose every sample is rejected (caption without image)
            from data_tools.synthetic import write_tar

            write_tar(str(inputs / f"{t}.tar"), [("x.txt", b"orphan caption")])
        first += n
    out = str(tmp_path / name)
    run_build([str(inputs)], out, tok, BuildSettings(), "Describe.", progress=False)
    merge(out)
    return out, tok


def test_dataset_indexes_all_shards_in_order_and_skips_empty_ones(tmp_path):
    out, tok = _build(tmp_path, "a", 300)
    ds = open_dataset(os.path.join(out, "manifest.json"))
    assert ds.shard_sizes == [30, 45] and ds.num_shards == 2 and len(ds) == 75
    assert ds.locate(0) == (0, 0) and ds.locate(29) == (0, 29) and ds.locate(30) == (1, 0)
    tokenizer = Tokenizer.from_file(ds.manifest.tokenizer_path)
    for i in (0, 29, 30, 74):
        sample = ds[i]
        assert sample.key == f"{i:09d}"
        assert tokenizer.decode(sample.tokens.tolist()) == make_caption(i)
    with pytest.raises(IndexError):
        ds[75]
    m = ds.manifest
    assert m.tokenizer["sha256"] == tokenizer.sha256 == Tokenizer.from_file(tok).sha256
    assert m.prompt_template == "Describe." and m.rejects == {"missing_image": 1}
    assert tokenizer.end_ids == [tokenizer.token_to_id("<|endoftext|>")]


def test_shard_from_another_tokenizer_is_refused(tmp_path):
    out_a, _ = _build(tmp_path, "a", 300)
    out_b, _ = _build(tmp_path, "b", 280)
    for suffix in (".bin", ".idx"):
        name = "shard-000002" + suffix
        shutil.copyfile(os.path.join(out_b, name), os.path.join(out_a, name))
    ds = open_dataset(os.path.join(out_a, "manifest.json"))
    assert ds[0].key == "000000000"
    with pytest.raises(ShardError, match="refusing to mix tokenizers") as err:
        ds[40]
    assert "shard-000002.idx" in str(err.value)
    with pytest.raises(BuildError, match="shard-000002.idx: made with another tokenizer"):
        merge(out_a)


def test_manifest_is_plain_json_with_per_shard_hashes(tmp_path):
    import hashlib

    out, _ = _build(tmp_path, "a", 300)
    data = json.load(open(os.path.join(out, "manifest.json")))
    assert data["num_samples"] == 75 and data["format"] == "genlip-shards"
    for entry in data["shards"]:
        prefix = os.path.join(out, entry["name"])
        assert entry["bin_sha256"] == hashlib.sha256(open(prefix + ".bin", "rb").read()).hexdigest()
        assert entry["idx_sha256"] == hashlib.sha256(open(prefix + ".idx", "rb").read()).hexdigest()
    assert np.array_equal(open_dataset(out).shard_sizes, [30, 45])


def test_dataset_and_reader_pickle_for_worker_processes(tmp_path):
    import pickle

    out, _ = _build(tmp_path, "a", 300)
    ds = open_dataset(out)
    first = ds[31]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy[31].image.tobytes() == first.image.tobytes() and copy[31].key == first.key
    reader = pickle.loads(pickle.dumps(ds.shard(1)))
    assert reader[1].tokens.tolist() == first.tokens.tolist()
