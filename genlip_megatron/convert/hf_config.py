"""Our config's model section <-> Hugging Face configs: the one place the key mapping lives.

GenLIP reads the table both ways (export, evaluation and random baselines go ModelConfig ->
GenLIPConfig; `convert from-hf` goes back). AIMv2 exports its encoder as transformers'
`Aimv2VisionModel` (one way: the decoder has no Hugging Face counterpart).
"""

from __future__ import annotations

import dataclasses

from genlip_megatron.hf.configuration_genlip import GenLIPConfig

# (ModelConfig key, GenLIPConfig key): the whole GenLIP mapping.
GENLIP_KEYS = (
    ("hidden_size", "hidden_size"), ("ffn_hidden_size", "intermediate_size"),
    ("num_layers", "num_hidden_layers"), ("num_attention_heads", "num_attention_heads"),
    ("patch_size", "patch_size"), ("num_channels", "num_channels"), ("text_embed_dim", "text_embed_dim"),
    ("vocab_size", "vocab_size"), ("layer_norm_eps", "layer_norm_eps"), ("layer_scale_init", "ls_init_value"),
    ("drop_path_rate", "drop_path_rate"), ("drop_path_schedule", "drop_path_schedule"),
    ("rope_theta", "rope_theta"), ("mrope_section", "mrope_section"), ("init_method_std", "initializer_range"),
)


def genlip_hf_config(model, vocab_size: int | None = None) -> GenLIPConfig:
    """The GenLIPConfig (official keys) of the GenLIP that `model` (a ModelConfig) describes.
    vocab_size: the unpadded vocabulary (default model.vocab_size)."""
    kwargs = {hf: getattr(model, ours) for ours, hf in GENLIP_KEYS}
    kwargs["mrope_section"] = list(model.mrope_section)
    kwargs["vocab_size"] = vocab_size or model.vocab_size
    return GenLIPConfig(**kwargs)


def genlip_model_config(config: GenLIPConfig, base, objective: str):
    """`base` (a ModelConfig) with every key of the GenLIP mapping taken from `config`, the local
    layer spec (what `convert from-hf` writes) and `model.objective = objective`."""
    values = {ours: getattr(config, hf) for ours, hf in GENLIP_KEYS}
    values.update(rope_theta=float(config.rope_theta), mrope_section=list(config.mrope_section))
    return dataclasses.replace(base, objective=objective, layer_spec="local", **values)


def aimv2_vision_config_kwargs(model) -> dict:
    """Our ModelConfig -> `transformers.Aimv2VisionConfig` keyword arguments (no pooling head)."""
    m = model
    return {"hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size,
            "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
            "num_channels": m.num_channels, "image_size": m.aimv2_image_size, "patch_size": m.patch_size,
            "hidden_act": "silu", "rms_norm_eps": m.layer_norm_eps, "qkv_bias": False, "mlp_bias": False,
            "use_head": False, "is_native": m.aimv2_position_embedding == "sincos"}
