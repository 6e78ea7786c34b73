"""Conversion refuses bad input with a one-line reason, and to-hf streams (peak RSS bounded by the
largest tensor, not the model). One small synthetic checkpoint serves every test here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from convert_runs import reference_hf_model

from genlip_megatron.checkpoint.reader import ConversionError
from genlip_megatron.checkpoint.run_dir import CheckpointError
from genlip_megatron.convert.from_hf import import_from_hf
from genlip_megatron.convert.to_hf import export_to_hf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))
import convert_memory  # noqa: E402 - bench/ is not a package

FIXED_SLACK = 40 * 2 ** 20  # allocator and page granularity above the baseline process


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tmp_path_factory.mktemp("hf") / "reference"
    reference_hf_model().save_pretrained(hf)
    out = tmp_path_factory.mktemp("ckpt") / "tp1"
    import_from_hf(str(hf), str(out))
    return {"hf": hf, "checkpoint": out}


def _copy(path, tmp_path):
    return shutil.copytree(path, tmp_path / "copy")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genlip_megatron.cli", "convert", *args], cwd=REPO,
                          capture_output=True, text=True)


def test_missing_shard_file_is_refused(checkpoint, tmp_path):
    copy = _copy(checkpoint["checkpoint"], tmp_path)
    os.remove(next(copy.glob("*.distcp")))
    with pytest.raises(CheckpointError, match="missing shard file"):
        export_to_hf(str(copy), str(tmp_path / "out"))


def test_config_that_does_not_match_the_tensors_is_refused(checkpoint, tmp_path):
    copy = _copy(checkpoint["checkpoint"], tmp_path)
    text = (copy / "config.yaml").read_text().replace("num_layers: 4", "num_layers: 6")
    (copy / "config.yaml").write_text(text)
    with pytest.raises(ConversionError, match="4 layers stored, config says 6"):
        export_to_hf(str(copy), str(tmp_path / "out"))


def test_checkpoint_of_another_model_is_refused(checkpoint, tmp_path):
    copy = _copy(checkpoint["checkpoint"], tmp_path)
    text = (copy / "config.yaml").read_text().replace("objective: genlip", "objective: aimv2")
    (copy / "config.yaml").write_text(text)
    with pytest.raises(ConversionError, match="objective 'aimv2'"):
        export_to_hf(str(copy), str(tmp_path / "out"))


def test_unknown_dtype_is_refused_with_one_line_and_exit_code_2(checkpoint, tmp_path):
    with pytest.raises(ConversionError, match="unknown dtype 'int8'"):
        export_to_hf(str(checkpoint["checkpoint"]), str(tmp_path / "out"), dtype="int8")
    proc = _cli("to-hf", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bf16_export_holds_the_rounded_weights(checkpoint, tmp_path):
    from safetensors.torch import load_file

    export_to_hf(str(checkpoint["checkpoint"]), str(tmp_path / "bf16"), dtype="bf16", without_tokenizer=True)
    ours = load_file(tmp_path / "bf16" / "model.safetensors")
    reference = reference_hf_model().state_dict()
    assert all(ours[k].dtype == torch.bfloat16 and torch.equal(ours[k], reference[k].bfloat16()) for k in reference)


def test_hf_side_refuses_pickle_other_models_and_mismatched_tensors(checkpoint, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint["hf"], pickled)
    os.remove(pickled / "model.safetensors")
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="no safetensors weights .*pytorch_model.bin"):
        import_from_hf(str(pickled), str(tmp_path / "a"))
    other = tmp_path / "other"
    shutil.copytree(checkpoint["hf"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    with pytest.raises(ConversionError, match="model_type 'llama'"):
        import_from_hf(str(other), str(tmp_path / "b"))
    (other / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    with pytest.raises(ConversionError, match="unexpected .*visual.layers.3"):
        import_from_hf(str(other), str(tmp_path / "c"))


def test_to_hf_peak_memory_is_bounded_by_the_largest_tensor_not_the_model(tmp_path):
    ckpt = tmp_path / "big"
    # 32 layers of width 256: 2 MiB largest tensor (linear_fc1), ~140 MB of model.
    subprocess.run([sys.executable, "-c", "import convert_memory as m; m.write_synthetic_checkpoint("
                    f"{str(ckpt)!r}, layers=32, width=256, ffn=1024, vocab=512)"],
                   cwd=os.path.join(REPO, "bench"), check=True, capture_output=True,
                   env=os.environ | {"PYTHONPATH": REPO})
    numbers = convert_memory.measure(str(ckpt), str(tmp_path / "hf"))
    over = numbers["convert_peak_rss_bytes"] - numbers["baseline_peak_rss_bytes"]
    assert numbers["checkpoint_model_bytes"] > 50 * numbers["largest_tensor_bytes"]
    assert over < 2 * numbers["largest_tensor_bytes"] + FIXED_SLACK, numbers
    assert over < numbers["checkpoint_model_bytes"], numbers  # what loading it whole would cost
