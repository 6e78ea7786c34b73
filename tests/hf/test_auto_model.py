"""An exported folder (weights + config.json + the hf/*.py files) loads with AutoModel(trust_remote_code=True)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from genlip_tiny import tiny_model
from transformers import AutoConfig, AutoModel

import genlip_megatron.hf as hf_package

OFFICIAL_KEYS = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size", "hidden_act",
    "use_swiglu_ffn", "ls_init_value", "drop_path_rate", "gated_attention", "mrope_interleaved", "rope_theta",
    "rope_scaling", "text_embed_dim", "vocab_size", "layer_norm_eps", "tie_word_embeddings",
}


def test_save_and_load_with_trust_remote_code(tmp_path: Path):
    model = tiny_model()
    folder = tmp_path / "genlip-tiny"
    model.save_pretrained(folder)
    for source in Path(hf_package.__file__).parent.glob("*.py"):
        if source.name != "__init__.py":
            shutil.copy(source, folder / source.name)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "genlip"
    assert OFFICIAL_KEYS <= set(config)
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert config["auto_map"]["AutoModel"] == "modeling_genlip.GenLIPModel"

    loaded_config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert loaded_config.mrope_section == [2, 3, 3] and loaded_config.text_embed_dim == 48
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(loaded).__module__ != type(model).__module__  # the copy in the folder, not our package
    pixels, ids = torch.randn(2, 3, 8, 12), torch.randint(1, 97, (2, 5))
    with torch.no_grad():
        a, b = model(pixel_values=pixels, input_ids=ids), loaded(pixel_values=pixels, input_ids=ids)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.image_features, b.image_features, rtol=0, atol=0)


def test_config_reads_official_rope_scaling():
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig

    config = GenLIPConfig.from_dict({"hidden_size": 1152, "rope_theta": 10000.0,
                                     "rope_scaling": {"type": "mrope", "mrope_section": [12, 12, 12]}})
    assert config.mrope_section == [12, 12, 12] and config.head_dim == 72
    assert config.text_embed_dim == 1152
