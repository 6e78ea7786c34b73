"""The one mapping between the plain-torch AIMv2 (hf/aimv2_reference.py, whose encoder is named as
transformers' `Aimv2VisionModel`) and our megatron-core AIMv2, plus the encoder export.

Works on FULL (unsharded) tensors; `convert/mcore_names.shard_for_model` / `gather_tp_slices` cut
and re-assemble TP slices as for GenLIP (the GLU rows of linear_fc1 included).
Layout facts (megatron-core 0.16, MHA, no output gate):
- linear_qkv rows are grouped per head: [q_h ; k_h ; v_h] for h = 0..heads-1;
- linear_fc1 rows are [gate_proj ; up_proj];
- the patch Conv2d [W, C, P, P] is stored as a Linear [W, C*P*P];
- the TE spec fuses each pre-norm into the next linear (`linear_qkv.layer_norm_weight`, ...).
"""

from __future__ import annotations

import torch

from genlip_megatron.convert.hf_config import aimv2_vision_config_kwargs
from genlip_megatron.hf.aimv2_reference import AIMv2ReferenceConfig

_GLOBAL = {  # reference name -> mcore name
    "vision.embeddings.patch_embed.bias": "patch_embedding.patch_embedding.bias",
    "vision.embeddings.rms_norm.weight": "patch_embedding.rms_norm.weight",
    "vision.embeddings.position_embedding.weight": "patch_embedding.position_embedding.weight",
    "vision.rms_norm.weight": "encoder.final_layernorm.weight",
    "proj.weight": "projection.weight",
    "embed_tokens.weight": "word_embeddings.weight",
    "norm.weight": "decoder.final_layernorm.weight",
    "pixel_head.weight": "pixel_head.weight",
    "lm_head.weight": "output_layer.weight",
}
_VOCAB_ROWS = {"embed_tokens.weight", "lm_head.weight"}
_STACKS = (("vision.encoder.layers.", "encoder.layers."), ("decoder.layers.", "decoder.layers."))
ENCODER_PREFIXES = ("patch_embedding.", "encoder.")  # mcore names of what Aimv2VisionModel holds


def _layer_names(layer_spec: str) -> dict[str, str]:
    te = layer_spec == "te"
    return {"rms_norm1.weight": "self_attention.linear_qkv.layer_norm_weight" if te
            else "input_layernorm.weight",
            "rms_norm2.weight": "mlp.linear_fc1.layer_norm_weight" if te else "pre_mlp_layernorm.weight",
            "attention.out_proj.weight": "self_attention.linear_proj.weight",
            "ffn.down_proj.weight": "mlp.linear_fc2.weight"}


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def reference_to_mcore(ref: dict, *, num_layers: int, num_heads: int, decoder_num_layers: int,
                       decoder_num_heads: int, padded_vocab: int, layer_spec: str = "local") -> dict:
    """Full reference state dict -> full megatron-core AIMv2 state dict."""
    w = ref["vision.embeddings.patch_embed.weight"]
    out = {"patch_embedding.patch_embedding.weight": w.reshape(w.shape[0], -1)}
    for src, dst in _GLOBAL.items():
        if src in ref:
            out[dst] = _pad_rows(ref[src], padded_vocab) if src in _VOCAB_ROWS else ref[src]
    names = _layer_names(layer_spec)
    for (src_stack, dst_stack), layers, heads in zip(_STACKS, (num_layers, decoder_num_layers),
                                                     (num_heads, decoder_num_heads)):
        for i in range(layers):
            src, dst = f"{src_stack}{i}.", f"{dst_stack}{i}."
            for a, b in names.items():
                out[dst + b] = ref[src + a]
            qkv = [ref[f"{src}attention.{x}_proj.weight"] for x in "qkv"]
            per_head = [t.reshape(heads, -1, t.shape[-1]) for t in qkv]
            out[dst + "self_attention.linear_qkv.weight"] = torch.cat(per_head, 1).reshape(-1, qkv[0].shape[-1])
            out[dst + "mlp.linear_fc1.weight"] = torch.cat([ref[src + "ffn.gate_proj.weight"],
                                                            ref[src + "ffn.up_proj.weight"]])
    return out


def mcore_to_reference(mc: dict, *, num_layers: int, num_heads: int, decoder_num_layers: int,
                       decoder_num_heads: int, vocab_size: int, patch_size: int, num_channels: int = 3,
                       layer_spec: str = "local") -> dict:
    """Full megatron-core AIMv2 state dict -> full reference state dict (vocabulary padding removed).
    Parts absent from `mc` (e.g. the decoder, for an encoder-only read) are left out."""
    out = {}
    if "patch_embedding.patch_embedding.weight" in mc:
        w = mc["patch_embedding.patch_embedding.weight"]
        out["vision.embeddings.patch_embed.weight"] = w.reshape(w.shape[0], num_channels, patch_size, patch_size)
    for src, dst in _GLOBAL.items():
        if dst in mc:
            out[src] = mc[dst][:vocab_size] if src in _VOCAB_ROWS else mc[dst]
    names = _layer_names(layer_spec)
    for (ref_stack, mc_stack), layers, heads in zip(_STACKS, (num_layers, decoder_num_layers),
                                                    (num_heads, decoder_num_heads)):
        for i in range(layers):
            ref, m = f"{ref_stack}{i}.", f"{mc_stack}{i}."
            if m + "self_attention.linear_qkv.weight" not in mc:
                continue
            for a, b in names.items():
                out[ref + a] = mc[m + b]
            qkv = mc[m + "self_attention.linear_qkv.weight"]
            for name, t in zip("qkv", qkv.reshape(heads, 3, -1, qkv.shape[-1]).unbind(1)):
                out[f"{ref}attention.{name}_proj.weight"] = t.reshape(-1, qkv.shape[-1])
            out[ref + "ffn.gate_proj.weight"], out[ref + "ffn.up_proj.weight"] = mc[m + "mlp.linear_fc1.weight"].chunk(2)
    return out


def mcore_to_vision(mc: dict, *, num_layers: int, num_heads: int, patch_size: int,
                    num_channels: int = 3, layer_spec: str = "local") -> dict:
    """Encoder part of a full megatron-core AIMv2 state dict -> `Aimv2VisionModel` state dict."""
    encoder = {k: v for k, v in mc.items() if k.startswith(ENCODER_PREFIXES)}
    ref = mcore_to_reference(encoder, num_layers=num_layers, num_heads=num_heads, decoder_num_layers=0,
                             decoder_num_heads=1, vocab_size=0, patch_size=patch_size,
                             num_channels=num_channels, layer_spec=layer_spec)
    return {k.removeprefix("vision."): v for k, v in ref.items() if k.startswith("vision.")}


def reference_config(model_cfg) -> AIMv2ReferenceConfig:
    """Our ModelConfig -> the plain-torch reference's config."""
    m = model_cfg
    return AIMv2ReferenceConfig(
        hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size, patch_size=m.patch_size, num_channels=m.num_channels,
        rms_norm_eps=m.layer_norm_eps, position_embedding=m.aimv2_position_embedding,
        image_size=m.aimv2_image_size, decoder_hidden_size=m.decoder_hidden_size,
        decoder_num_layers=m.decoder_num_layers, decoder_num_heads=m.decoder_num_attention_heads,
        decoder_ffn_hidden_size=m.decoder_ffn_hidden_size,
        decoder_mrope_section=list(m.decoder_mrope_section), rope_theta=m.rope_theta,
        vocab_size=m.vocab_size)


def export_vision_model(mc: dict, model_cfg, out_dir: str, layer_spec: str = "local", dtype=None,
                        max_shard_size: int | str = "2GB"):
    """Write an `Aimv2VisionModel` folder (config.json + safetensors) from a full (or encoder-only)
    mcore state dict, in `dtype` (default: as stored); returns the loaded transformers model.
    Strict loading: every encoder tensor must map."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    m = model_cfg
    model = Aimv2VisionModel(Aimv2VisionConfig(**aimv2_vision_config_kwargs(m)))
    state = mcore_to_vision(mc, num_layers=m.num_layers, num_heads=m.num_attention_heads,
                            patch_size=m.patch_size, num_channels=m.num_channels, layer_spec=layer_spec)
    model.load_state_dict(state, strict=True)
    model.to(dtype or mc["patch_embedding.patch_embedding.weight"].dtype)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    return model
