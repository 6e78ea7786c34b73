"""Hostile Hugging Face folders and repeated exports: one line naming the file, nothing run, nothing stale.

An HF folder exported from a genuine tiny run is damaged one way per case (truncated, garbled or
oversized safetensors, broken config.json or index, pickled weights carrying the exploit) and given
to every command that reads HF folders: convert from-hf, convert to-timm, eval, caption. Exports
into one folder twice leave exactly the files of the second export; an export that fails midway
leaves the previous one untouched; a folder of someone else's files is never replaced.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
from crafted_checkpoints import payload_in_distcp_tensor, train_tiny
from harness import PEAK_MB_LIMIT, Marker, run_command, snapshot
from multiproc import run_on_ranks
from PIL import Image

from genlip_megatron.data.tokenizer import train_bpe

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_inputs")
    assert run_on_ranks(1, train_tiny, str(root / "run"), 2)[0]["exit_code"] == 0
    assert run_command(["convert", "to-hf", root / "run", root / "hf", "--without-tokenizer"]).code == 0
    train_bpe(["a photo of a bag.", "describe it"] * 20, 280, str(root / "tokenizer.json"), min_frequency=1)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "test.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a photo of a bag.", "label": 0}))
    return root


def _weights(folder) -> str:
    return os.path.join(folder, "model.safetensors")


def truncated(folder, marker):
    path = _weights(folder)
    os.truncate(path, os.path.getsize(path) // 2)
    return "model.safetensors"


def header_claims_a_terabyte(folder, marker):
    with open(_weights(folder), "r+b") as f:
        f.write(struct.pack("<Q", 1 << 40))
    return "model.safetensors"


def header_garbled(folder, marker):
    with open(_weights(folder), "r+b") as f:
        f.seek(8)
        f.write(b"{\"x\": [" * 50)
    return "model.safetensors"


def offsets_past_the_data(folder, marker):
    path = _weights(folder)
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10 ** 9
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return "model.safetensors"


def empty_weights(folder, marker):
    open(_weights(folder), "wb").close()
    return "model.safetensors"


def config_not_json(folder, marker):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write('{"model_type": "genlip", "hidden_size": ')
    return "config.json"


def config_a_list(folder, marker):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("[1, 2]")
    return "config.json"


def config_deep(folder, marker):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write('{"model_type": "genlip", "x": ' + "[" * 20000 + "]" * 20000 + "}")
    return "config.json"


def config_huge(folder, marker):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write('{"model_type": "genlip", "pad": "' + "x" * (2 << 20) + '"}')
    return "config.json"


def config_wrong_type(folder, marker):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        data = json.load(f)
    data["mrope_section"] = "abc"
    with open(path, "w") as f:
        json.dump(data, f)
    return "config.json"


def config_not_utf8(folder, marker):
    with open(os.path.join(folder, "config.json"), "wb") as f:
        f.write(b'{"model_type": "genlip\xff"}')
    return "config.json"


def index_escapes_the_folder(folder, marker):
    os.rename(_weights(folder), os.path.join(folder, "model-00001-of-00001.safetensors"))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"x": "../../outside.safetensors"}}, f)
    return "model.safetensors.index.json"


def index_not_json(folder, marker):
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        f.write("{")
    return "model.safetensors.index.json"


def only_pickled_weights(folder, marker):
    os.remove(_weights(folder))
    with open(os.path.join(folder, "pytorch_model.bin"), "wb") as f:
        pickle.dump(marker.reduce(), f)
    return "pytorch_model.bin"


CASES = [truncated, header_claims_a_terabyte, header_garbled, offsets_past_the_data, empty_weights,
         config_not_json, config_a_list, config_deep, config_huge, config_wrong_type, config_not_utf8,
         index_escapes_the_folder, index_not_json, only_pickled_weights]


def _commands(sources, folder, out) -> dict[str, list]:
    return {
        "from-hf": ["convert", "from-hf", folder, out],
        "to-timm": ["convert", "to-timm", folder, out],
        "eval": ["eval", "--checkpoint", folder, "--test", sources / "test.jsonl", "--tokenizer",
                 sources / "tokenizer.json", "--image-size", "8", "--tasks", "caption_loss"],
        "caption": ["caption", sources / "a.png", "--checkpoint", folder, "--tokenizer",
                    sources / "tokenizer.json", "--image-size", "8", "--max-new-tokens", "2"],
    }


@pytest.mark.parametrize("command", ["from-hf", "to-timm", "eval", "caption"])
@pytest.mark.parametrize("damage", CASES, ids=lambda f: f.__name__)
def test_damaged_hf_folder_is_refused_in_one_line_naming_the_file(sources, tmp_path, damage, command):
    folder = shutil.copytree(sources / "hf", tmp_path / "hf")
    marker = Marker(tmp_path)
    named = damage(str(folder), marker)
    before = snapshot(folder)
    outcome = run_command(_commands(sources, folder, tmp_path / "out")[command])
    line = outcome.refused_in_one_line(named)
    assert len(line) < 600
    assert not marker.fired
    assert outcome.peak_mb < PEAK_MB_LIMIT
    assert snapshot(folder) == before and not (tmp_path / "out").exists()


def test_a_second_export_into_one_folder_leaves_no_stale_shards(sources, tmp_path):
    out = tmp_path / "hf"
    assert run_command(["convert", "to-hf", sources / "run", out, "--without-tokenizer",
                        "--max-shard-size", "20000"]).code == 0
    sharded = sorted(os.listdir(out))
    assert sum(name.endswith(".safetensors") for name in sharded) > 2
    assert run_command(["convert", "to-hf", sources / "run", out, "--without-tokenizer"]).code == 0
    fresh = tmp_path / "fresh"
    assert run_command(["convert", "to-hf", sources / "run", fresh, "--without-tokenizer"]).code == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(fresh))
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no stage left behind


def test_an_export_that_fails_midway_leaves_the_previous_export_untouched(sources, tmp_path):
    out = tmp_path / "hf"
    assert run_command(["convert", "to-hf", sources / "run", out, "--without-tokenizer"]).code == 0
    before = snapshot(out)
    crafted = shutil.copytree(sources / "run", tmp_path / "crafted")
    marker = Marker(tmp_path)
    named = payload_in_distcp_tensor(str(crafted / "iter_0000002"), marker)  # fails while tensors stream
    outcome = run_command(["convert", "to-hf", crafted, out, "--without-tokenizer"])
    outcome.refused_in_one_line(named)
    assert snapshot(out) == before and not marker.fired
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_a_folder_of_other_files_is_never_replaced(sources, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for argv in (["convert", "to-hf", sources / "run", out, "--without-tokenizer"],
                 ["convert", "to-timm", sources / "run", out], ["convert", "from-hf", sources / "hf", out]):
        outcome = run_command(argv)
        outcome.refused_in_one_line(str(out), "not an earlier export")
        assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
