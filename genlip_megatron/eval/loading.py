"""Get a plain-torch GenLIP (genlip_megatron/hf) to evaluate: from an HF folder, from a config (random
init, the baseline of the same size), or from a full megatron-core state dict in memory.

Evaluation always runs on the HF reference model, in one process: the numbers then do not depend on
the parallel layout the model was trained with, and an exported folder is evaluated by the same code.

Training writes megatron dist_checkpointing folders; conversion's reader
(`convert.checkpoint.load_full_mcore_state_dict`) gathers one into a FULL megatron-core state dict
without a process group, and `model_from_mcore_state_dict` maps it onto the HF model.
"""

from __future__ import annotations

import os

import torch

from genlip_megatron.config.schema import ModelConfig
from genlip_megatron.convert.mcore_names import mcore_to_hf
from genlip_megatron.hf.configuration_genlip import GenLIPConfig
from genlip_megatron.hf.modeling_genlip import GenLIPModel


def hf_config_from_model_config(model: ModelConfig, vocab_size: int | None = None) -> GenLIPConfig:
    """The HF config of the GenLIP that `model` (our config tree's model section) describes.
    vocab_size: the unpadded vocabulary (default model.vocab_size)."""
    if model.objective != "genlip":
        raise ValueError(f"evaluation covers GenLIP only, not objective {model.objective!r}")
    return GenLIPConfig(
        hidden_size=model.hidden_size, intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers, num_attention_heads=model.num_attention_heads,
        patch_size=model.patch_size, num_channels=model.num_channels, text_embed_dim=model.text_embed_dim,
        vocab_size=vocab_size or model.vocab_size, layer_norm_eps=model.layer_norm_eps,
        ls_init_value=model.layer_scale_init, drop_path_rate=model.drop_path_rate,
        drop_path_schedule=model.drop_path_schedule,
        rope_theta=model.rope_theta, mrope_section=list(model.mrope_section),
        initializer_range=model.init_method_std,
    )


def random_model(model: ModelConfig, seed: int = 0, vocab_size: int | None = None) -> GenLIPModel:
    """A randomly initialised GenLIP of the configured size (the 'no training' row of a report)."""
    torch.manual_seed(seed)
    return GenLIPModel(hf_config_from_model_config(model, vocab_size)).eval()


def random_like(model: GenLIPModel, seed: int = 0) -> GenLIPModel:
    """A randomly initialised GenLIP with the same config as `model`."""
    torch.manual_seed(seed)
    return GenLIPModel(GenLIPConfig.from_dict(model.config.to_dict())).eval()


def model_from_mcore_state_dict(state_dict: dict, model: ModelConfig, vocab_size: int | None = None
                                ) -> GenLIPModel:
    """HF GenLIP holding the weights of a FULL (unsharded, global layer numbering) mcore state dict."""
    config = hf_config_from_model_config(model, vocab_size)
    tensors = {k: v for k, v in state_dict.items() if not k.endswith("_extra_state")}
    hf_state = mcore_to_hf(tensors, num_layers=model.num_layers, num_heads=model.num_attention_heads,
                           vocab_size=config.vocab_size, patch_size=model.patch_size,
                           num_channels=model.num_channels, layer_spec=model.layer_spec)
    hf = GenLIPModel(config)
    missing, unexpected = hf.load_state_dict({k: v.float() for k, v in hf_state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"mcore -> HF weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf.eval()


def load_model(path: str) -> GenLIPModel:
    """An HF GenLIP folder (config.json + weights), or a training run directory / checkpoint folder
    (megatron dist_checkpointing). Returned in eval mode, fp32."""
    if os.path.isfile(os.path.join(path, "config.json")):
        from genlip_megatron.convert.hf_reader import check_hf_folder

        check_hf_folder(path)  # one line for a broken config.json or weight file; pickled weights refused
        return GenLIPModel.from_pretrained(path, torch_dtype=torch.float32, use_safetensors=True).eval()
    return load_checkpoint_model(path)[0]


def load_checkpoint_model(path: str):
    """Run directory or checkpoint folder -> (HF GenLIPModel in eval mode, the run's Config)."""
    from genlip_megatron.convert.checkpoint import load_full_mcore_state_dict

    state_dict, config = load_full_mcore_state_dict(path)
    state_dict = {k: v.float() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    return model_from_mcore_state_dict(state_dict, config.model), config
