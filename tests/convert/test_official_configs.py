"""The three official GenLIP model configs (tests/fixtures/official_genlip, numbers of github
YanFangCS/GenLIP configs/model_configs/genlip/*.json) are what our presets build, and a folder in the
official layout goes through `genlip convert from-hf` into a checkpoint plus a config that
`genlip train` runs with no edit.

The training check keeps each JSON's width, heads, SwiGLU width, text_embed_dim and mrope_section
(so head_dim 72 / 96, the interleaved MRoPE with [8, 12, 12] and in_proj / proj are all exercised),
but cuts the depth to 2 blocks and the vocabulary to 1,000 tokens: the full models hold 0.7-1.5B
parameters, more than four CPU ranks on a shared 2-core machine can train in a test. Weights are
random in the official layout (no model hub is reachable); DropPath is switched off for the
training check only, because it draws random masks in training mode and the HF loss is the
deterministic one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from multiproc import run_on_ranks
from official_runs import megatron_parameter_count, train_converted
from safetensors.torch import save_file

from genlip_megatron.cli import main as genlip
from genlip_megatron.config.load import load_config
from genlip_megatron.config.validate import validate
from genlip_megatron.convert.from_hf import read_hf_config, run_config_from_hf
from genlip_megatron.hf.configuration_genlip import GenLIPConfig
from genlip_megatron.hf.modeling_genlip import GenLIPModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official_genlip"
# official JSON -> (our preset, total parameters: embeddings and lm_head of 151,936 tokens included)
OFFICIAL = {
    "genlip_l16_224": ("genlip_l16", 702_392_832),
    "genlip_so16_224": ("genlip_so16", 817_301_376),
    "genlip_g16_224": ("genlip_g16", 1_543_396_352),
}
DEPTH, VOCAB = 2, 1000  # training check only (see the module docstring)


def official_json(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def official_folder(tmp_path: Path, raw: dict) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def closed_form(c: dict) -> int:
    """Parameter count of the official module tree (genlip_modeling.py) for config.json `c`."""
    w, f, e, v, p = c["hidden_size"], c["intermediate_size"], c["text_embed_dim"], c["vocab_size"], c["patch_size"]
    block = (2 * 2 * w  # layer_norm1/2
             + (2 * w * w + 2 * w) + 3 * (w * w + w)  # q_proj [q ; gate], k/v/out_proj, with biases
             + 2 * (w * f + f) + (f * w + w)  # fc1, gate_fc, fc2 with biases
             + 2 * w)  # layer_scale1/2
    text = 2 * v * e + ((e * w + w) + (w * e + e) if e != w else 0)  # embeddings, lm_head, in_proj, proj
    return (3 * p * p * w + w) + c["num_hidden_layers"] * block + 2 * w + text


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_config_json_validates_as_it_is_and_equals_our_preset(name, tmp_path):
    config = read_hf_config(str(official_folder(tmp_path, official_json(name))))
    cfg = run_config_from_hf(config, None, tp=1, pp=1, vpp=None)
    assert validate(cfg, world_size=8) == []
    preset = load_config(OFFICIAL[name][0])
    assert cfg.model == preset.model  # the converted model section IS the preset's
    assert cfg.optimizer == preset.optimizer and cfg.schedule == preset.schedule  # default base: that preset


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_models_have_the_official_parameter_count(name):
    raw = official_json(name)
    expected = OFFICIAL[name][1]
    assert closed_form(raw) == expected
    with torch.device("meta"):
        hf = GenLIPModel(GenLIPConfig.from_dict(raw))
    assert sum(p.numel() for p in hf.parameters()) == expected
    # ours, built by megatron-core at TP1 (151,936 is a multiple of 128: no vocabulary padding)
    counts = run_on_ranks(4, megatron_parameter_count, load_config(OFFICIAL[name][0]).model, timeout=300)
    assert counts == [expected] * 4


def _random_official_weights(config: GenLIPConfig, seed: int = 0) -> dict:
    """A model in the official layout with every tensor moved off its init value."""
    torch.manual_seed(seed)
    model = GenLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


BASE = """\
# the run's non-model settings: a tiny synthetic CPU run
data: {image_size: 32, seq_length: 48, max_caption_tokens: 12}
train: {device: cpu, precision: fp32, synthetic_data: true, micro_batch_size: 1, global_batch_size: 2,
        step_timeout_s: 600}
schedule: {train_iters: 2, warmup_fraction: 0.0}
optimizer: {lr: 1.0e-3}
model: {make_vocab_size_divisible_by: 8}
checkpoint: {dir: ""}
logging: {progress_bar: false, log_interval: 1}
"""


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_from_hf_output_trains_two_steps_at_tp2_pp2_from_the_hf_models_loss(name, tmp_path):
    raw = {**official_json(name), "num_hidden_layers": DEPTH, "vocab_size": VOCAB}
    folder = official_folder(tmp_path, raw)
    model = _random_official_weights(GenLIPConfig.from_dict(raw))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    base = tmp_path / "base.yaml"
    base.write_text(BASE)
    out = tmp_path / "converted"
    assert genlip(["convert", "from-hf", str(folder), str(out), "--tp", "2", "--pp", "2", "--config", str(base)]) == 0

    results = run_on_ranks(4, train_converted, str(out / "config.yaml"), ["model.drop_path_rate=0.0"],
                           tp=2, pp=2, timeout=600)
    losses = results[0]["losses"]
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    assert all(r["exit_code"] == 0 for r in results)
    with torch.no_grad():
        sums, counts = zip(*(model.loss_packed(b) for b in results[0]["batches"]))
    expected = (sum(sums) / sum(counts)).item()
    assert abs(losses[1] - expected) < 1e-5, (losses[1], expected)
