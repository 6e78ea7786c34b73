"""A checkpoint trained a few steps at TP2 x PP2 exports to an HF folder that reproduces the
megatron-core model: logits and trunk features on the same packed batch (fp32, <= 1e-5), loaded with
AutoModel(trust_remote_code=True) from the folder alone; its trunk in timm 1.0.31's NaFlexVit gives
the same image features."""

from __future__ import annotations

import json

import pytest
import torch
from convert_runs import PATCH, VOCAB, logits_and_features, probe_batch, train
from multiproc import run_on_ranks

from genlip_megatron.convert.to_hf import export_to_hf
from genlip_megatron.convert.to_timm import export_to_timm

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = run_on_ranks(4, train, str(run_dir), 2, 2, tp=2, pp=2, timeout=300)[0]
    assert result["exit_code"] == 0 and sorted(result["losses"]) == [1, 2, 3]
    captured = [r for r in run_on_ranks(4, logits_and_features, str(run_dir / "iter_0000003"), 2, 2, tp=2, pp=2, timeout=300)
                if r is not None]
    folder = tmp_path_factory.mktemp("hf") / "genlip-tiny"
    summary = export_to_hf(str(run_dir), str(folder), max_shard_bytes=60_000, without_tokenizer=True)  # several shards
    return {"run_dir": run_dir, "logits": captured[0][0], "features": captured[0][1],
            "folder": folder, "summary": summary}


def test_exported_folder_reproduces_megatron_logits_and_features(trained):
    from transformers import AutoModel

    folder = trained["folder"]
    assert len(trained["summary"]["files"]) > 1 and (folder / "model.safetensors.index.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "genlip" and config["vocab_size"] == VOCAB
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules")  # the folder's code, not ours
    b = probe_batch()
    with torch.no_grad():
        out = model.forward_packed(b["tokens"], b["image_patches"], b["is_image"], b["position_ids"],
                                   b["segment_ids"])
    mcore_logits = trained["logits"]
    assert mcore_logits.shape[-1] > VOCAB  # the padded rows were cut on export
    # Every token of a sample; pack padding carries no loss and the CPU fused kernel leaves it arbitrary.
    real = b["segment_ids"] >= 0
    assert 0 < int(real.sum()) < real.numel()
    torch.testing.assert_close(out["logits"][real], mcore_logits[..., :VOCAB][real], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(out["hidden_states"][real], trained["features"][real], rtol=0, atol=TOLERANCE)


def test_folder_has_tokenizer_free_extras_and_a_model_card(trained):
    folder = trained["folder"]
    card = (folder / "README.md").read_text()
    assert "steps: 3" in card and "synthetic batches" in card and "hidden_size: 32" in card
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 8, "width": 8} and processor["image_mean"] == [0.5] * 3
    assert processor["genlip_native_resolution"]["patch_size"] == PATCH
    assert (folder / "modeling_genlip.py").is_file()


def test_exported_trunk_in_timm_gives_the_megatron_image_features(trained, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file
    from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg

    assert tuple(int(x) for x in timm.__version__.split(".")[:3]) >= (1, 0, 31)
    export_to_timm(str(trained["folder"]), str(tmp_path / "timm"))
    cfg = json.loads((tmp_path / "timm" / "timm_config.json").read_text())["cfg"]
    reference = NaFlexVit(NaFlexVitCfg(**cfg), in_chans=3, num_classes=0).eval()
    reference.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    b = probe_batch()
    # Sample 0 of sequence 0 is a 2 x 3 patch image; its patches are rows of (channel, row, col).
    gh, gw = 2, 3
    patches = b["image_patches"][: gh * gw].reshape(gh, gw, 3, PATCH, PATCH)
    image = patches.permute(2, 0, 3, 1, 4).reshape(1, 3, gh * PATCH, gw * PATCH)
    with torch.no_grad():
        theirs = reference.forward_features(image)[0]
    torch.testing.assert_close(theirs, trained["features"][0, : gh * gw], rtol=0, atol=TOLERANCE)
