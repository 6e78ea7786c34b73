"""GenLIP's evaluation model: the plain-torch GenLIP of genlip_megatron/hf (what `convert to-hf`
exports), built from our config or from a full megatron-core state dict. Evaluation runs on it in
one process, so the numbers do not depend on the layout a model was trained with."""

from __future__ import annotations

import torch

from genlip_megatron.convert.hf_config import genlip_hf_config
from genlip_megatron.convert.mcore_names import mcore_to_hf
from genlip_megatron.hf.modeling_genlip import GenLIPModel


def random_model(model_cfg, seed: int = 0, vocab_size: int | None = None) -> GenLIPModel:
    """A randomly initialised GenLIP of the configured size (the 'no training' row of a report)."""
    torch.manual_seed(seed)
    return GenLIPModel(genlip_hf_config(model_cfg, vocab_size)).eval()


def model_from_mcore_state_dict(state_dict: dict, model_cfg, vocab_size: int | None = None) -> GenLIPModel:
    """HF GenLIP holding the weights of a FULL (unsharded, global layer numbering) mcore state dict."""
    config = genlip_hf_config(model_cfg, vocab_size)
    tensors = {k: v for k, v in state_dict.items() if not k.endswith("_extra_state")}
    hf_state = mcore_to_hf(tensors, num_layers=model_cfg.num_layers, num_heads=model_cfg.num_attention_heads,
                           vocab_size=config.vocab_size, patch_size=model_cfg.patch_size,
                           num_channels=model_cfg.num_channels, layer_spec=model_cfg.layer_spec)
    hf = GenLIPModel(config)
    missing, unexpected = hf.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"mcore -> HF weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf.eval()


def load_hf_folder(folder: str) -> GenLIPModel:
    from genlip_megatron.convert.hf_reader import check_hf_folder

    check_hf_folder(folder)  # one line for a broken config.json or weight file; pickled weights refused
    return GenLIPModel.from_pretrained(folder, torch_dtype=torch.float32, use_safetensors=True).eval()
