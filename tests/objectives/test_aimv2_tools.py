"""AIMv2 reaches the tools GenLIP has: `genlip eval` on an AIMv2 training checkpoint (caption loss, linear
and attentive probes) with an evaluation model equal to the trained megatron-core model, `genlip plan` on
the AIMv2 presets, and `genlip convert to-hf` writing the encoder as transformers' Aimv2VisionModel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))  # the trainer tests' tiny run

from multiproc import run_on_ranks
from tiny_runs import layout, tiny_config, train_in_pool

from genlip_megatron.cli import main
from genlip_megatron.data.tokenizer import Tokenizer, train_bpe
from genlip_megatron.eval.datasets import load_jsonl_split
from genlip_megatron.eval.likelihood import caption_loss
from genlip_megatron.eval.loading import load_model
from genlip_megatron.eval.sequences import text_layout
from genlip_megatron.training.batches import SyntheticBatches

AIMV2 = ["model.objective=aimv2", "model.attention=dense", "model.decoder_hidden_size=24", "model.decoder_num_layers=2",
         "model.decoder_num_attention_heads=4", "model.decoder_ffn_hidden_size=48",
         "model.decoder_mrope_section=[1,1,1]", "model.aimv2_image_size=8", "model.layer_norm_eps=1e-5",
         "model.vocab_size=320", "schedule.train_iters=2", "checkpoint.save_interval=2"]
PROMPT = "describe it"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step AIMv2 run, a byte-level tokenizer and 6 labelled 8 x 8 PNGs in a JSONL."""
    root = tmp_path_factory.mktemp("aimv2_tools")
    [result] = run_on_ranks(1, train_in_pool, AIMV2 + layout() + [f"checkpoint.dir={root / 'run'}"])
    assert result["exit_code"] == 0
    captions = ["a bag", "a boot", "a shirt"]
    train_bpe(captions * 20 + [PROMPT] * 5, 300, str(root / "tokenizer.json"), min_frequency=1)
    rng = np.random.default_rng(0)
    with open(root / "test.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(root / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": captions[i % 3], "label": i % 3}) + "\n")
    return root


def megatron_logits(run_dir: str, overrides: list[str]):
    """In a pool worker: the trained megatron-core AIMv2 (TP1), loaded from the run, on one batch with
    full encoder attention; returns (batch, logits [B, S, V] on the true vocabulary, features)."""
    from genlip_megatron.checkpoint.run_dir import read_latest
    from genlip_megatron.checkpoint.sharded import load_checkpoint
    from genlip_megatron.training.model_setup import build_training_modules

    cfg = tiny_config(overrides)
    modules = build_training_modules(cfg)
    source = SyntheticBatches(cfg, 0, 1)
    load_checkpoint(read_latest(run_dir), modules, source, finetune=True)
    batch = source.next()
    model = modules.model[0].module.eval()
    with torch.no_grad():
        logits, _ = model(batch.tokens, batch.image_patches, batch.is_image, batch.position_ids,
                          batch.segment_ids, image_prefix=batch.is_image)
        features, valid = model.features(batch.image_patches, batch.is_image, batch.position_ids,
                                         batch.segment_ids)
    return batch, logits.transpose(0, 1)[..., : cfg.model.vocab_size], features[valid]


def test_eval_model_of_the_checkpoint_equals_the_trained_megatron_model(trained):
    run = str(trained / "run")
    [(batch, want_logits, want_features)] = run_on_ranks(1, megatron_logits, run, AIMV2 + layout())
    model = load_model(run)
    out = model.forward_packed(batch.tokens, batch.image_patches, batch.is_image, batch.position_ids,
                               batch.segment_ids)
    real = batch.segment_ids >= 0
    assert (out["logits"] - want_logits)[real].abs().max() <= 1e-5
    assert (out["hidden_states"][batch.is_image] - want_features).abs().max() <= 1e-5


def test_eval_command_on_an_aimv2_checkpoint(trained, tmp_path):
    out = tmp_path / "results.json"
    args = ["eval", "--checkpoint", str(trained / "run"), "--tokenizer", str(trained / "tokenizer.json"),
            "--test", str(trained / "test.jsonl"), "--train", str(trained / "test.jsonl"), "--prompt", PROMPT,
            "--random-baseline", "--json", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    tokenizer = Tokenizer.from_file(str(trained / "tokenizer.json"))
    test = load_jsonl_split(str(trained / "test.jsonl"), 8)
    want = caption_loss(load_model(str(trained / "run")), tokenizer, test.images, test.captions,
                        text_layout(tokenizer, PROMPT))
    assert results["model"]["caption_loss"] == pytest.approx(want["caption_loss"], rel=1e-6)
    for key in ("linear_probe", "attentive_probe"):
        assert 0.0 <= results["model"][key] <= 1.0 and 0.0 <= results["random"][key] <= 1.0
    assert "zero_shot_sum" not in results["model"] and len(results["model"]["examples"]["captions"]) == 6
    assert main(args[:-2] + ["--tasks", "zero_shot"]) == 2  # not an AIMv2 task: one line, exit 2


@pytest.mark.parametrize("preset", ["aimv2_l14", "aimv2_h14", "aimv2_1b14", "aimv2_3b14"])
def test_plan_runs_on_the_aimv2_presets(preset, capsys):
    assert main(["plan", preset, "--gpus", "64", "--gpu", "h100", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: aimv2,") and "fitting layouts:" in out and "MFU" in out
    assert "fitting layouts: 0" not in out


def test_plan_counts_aimv2_l14_parameters_by_hand():
    from genlip_megatron.config.load import load_config
    from launch.memory import total_params

    w, f, hd, fd, v, d = 1024, 2816, 1024, 2816, 151936, 3 * 14 * 14
    encoder = 24 * (4 * w * w + 3 * w * f + 2 * w) + w  # blocks + final RMSNorm
    embed = d * w + w + w + 16 * 16 * w  # patch Linear + bias, RMSNorm, learned 16 x 16 table
    decoder = 12 * (4 * hd * hd + 3 * hd * fd + 2 * hd) + hd
    heads = w * hd + 2 * v * hd + hd * d  # projection, token embedding, text head, pixel head
    assert total_params(load_config("aimv2_l14")) == encoder + embed + decoder + heads


def test_convert_to_hf_writes_the_encoder_as_aimv2_vision_model(trained, tmp_path):
    from transformers import Aimv2VisionModel

    out = tmp_path / "hf"
    assert main(["convert", "to-hf", str(trained / "run"), str(out)]) == 0
    vision = Aimv2VisionModel.from_pretrained(out).eval()
    ours = load_model(str(trained / "run"))
    images = load_jsonl_split(str(trained / "test.jsonl"), 8).images
    inputs = ours.build_packed_inputs(images)
    want = ours.forward_packed(**inputs)["hidden_states"]
    with torch.no_grad():
        got = vision(pixel_values=images).last_hidden_state
    assert (got - want).abs().max() <= 1e-5
    assert main(["convert", "to-timm", str(trained / "run"), str(tmp_path / "timm")]) == 2  # refused in one line
