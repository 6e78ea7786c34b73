"""Official GenLIP (Hugging Face layout) weight names -> timm `NaFlexVit` (image trunk only).

timm 1.0.31 `timm/models/naflexvit.py` builds a GenLIP-style image encoder with
`rope_type='mrope'`, `attn_gated=True`, `swiglu_mlp=True`, `qkv_fused=True`, LayerScale and no position
embedding. `naflexvit_kwargs(config)` gives the matching `NaFlexVitCfg` fields; `to_timm_state_dict`
renames and fuses the tensors. The text side (embeddings, in_proj, proj, lm_head) has no timm
counterpart and is dropped.

How timm differs in layout (values are the same):
- q/k/v are one fused `attn.qkv` ([q ; k ; v] rows, with bias) and the gate is a separate `attn.gate`
  Linear; GenLIP's `q_proj` holds [q ; gate] rows.
- the SwiGLU is timm's packed `GluMlp`: `mlp.fc1` rows [gate_fc ; fc1], act(first half) * second half.
- LayerScale vectors are `gamma_1` / `gamma_2`; the final LayerNorm is `norm`.
- the patch embedding is `embeds.proj`: a Conv2d (embed_proj_type 'conv', NCHW input) or a Linear on
  (channel, row, col)-ordered patches (embed_proj_type 'linear', patchify_channels_last=False).
"""

from __future__ import annotations

import re

import torch

# Plain renames: GenLIP name (regex) -> timm name (re.sub template). N = layer index.
RENAMES: list[tuple[str, str]] = [
    (r"^visual\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^visual\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^visual\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^visual\.layers\.(\d+)\.layer_scale1\.lambda1$", r"blocks.\1.gamma_1"),
    (r"^visual\.layers\.(\d+)\.layer_scale2\.lambda1$", r"blocks.\1.gamma_2"),
    (r"^visual\.layers\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.fc2."),
    (r"^ln_post\.", r"norm."),
]

# Fused targets: timm name (per layer, {n} = index) <- GenLIP sources concatenated along dim 0.
# "q_proj[:W]" / "q_proj[W:]" are the query rows and the gate rows of the GenLIP q_proj.
FUSED: dict[str, list[str]] = {
    "blocks.{n}.attn.qkv.{p}": [
        "visual.layers.{n}.self_attn.q_proj.{p}[:W]",
        "visual.layers.{n}.self_attn.k_proj.{p}",
        "visual.layers.{n}.self_attn.v_proj.{p}",
    ],
    "blocks.{n}.attn.gate.{p}": ["visual.layers.{n}.self_attn.q_proj.{p}[W:]"],
    "blocks.{n}.mlp.fc1.{p}": ["visual.layers.{n}.mlp.gate_fc.{p}", "visual.layers.{n}.mlp.fc1.{p}"],
}

TEXT_ONLY_PREFIXES = ("embeddings.", "in_proj.", "proj.", "lm_head.")


def naflexvit_kwargs(config) -> dict:
    """`NaFlexVitCfg` fields matching a GenLIPConfig (or any object with the same attributes)."""
    return {
        "patch_size": config.patch_size,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "init_values": config.ls_init_value,
        "drop_path_rate": config.drop_path_rate,
        "class_token": False,
        "reg_tokens": 0,
        "pos_embed": "none",
        "rope_type": "mrope",
        "rope_mrope_section": tuple(config.mrope_section),
        "rope_temperature": float(config.rope_theta),
        "rope_grid_indexing": "ij",
        "attn_gated": True,
        "swiglu_mlp": True,
        "qkv_fused": True,
        "qkv_bias": True,
        "embed_proj_type": "conv",
        "patchify_channels_last": False,
        "global_pool": "",
        "final_norm": True,
        "fc_norm": False,
    }


def _source(state_dict: dict, spec: str, width: int) -> torch.Tensor:
    if spec.endswith("[:W]"):
        return state_dict[spec[:-4]][:width]
    if spec.endswith("[W:]"):
        return state_dict[spec[:-4]][width:]
    return state_dict[spec]


def to_timm_state_dict(state_dict: dict, hidden_size: int, embed_proj_type: str = "conv") -> dict:
    """GenLIP state dict (official names) -> timm NaFlexVit state dict (image trunk only).

    Raises KeyError on a GenLIP tensor this table does not account for, so a new tensor cannot be
    silently dropped.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    layers = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"^visual\.layers\.(\d+)\.", k))})
    for n in layers:
        for target, sources in FUSED.items():
            for p in ("weight", "bias"):
                specs = [s.format(n=n, p=p) for s in sources]
                out[target.format(n=n, p=p)] = torch.cat([_source(state_dict, s, hidden_size) for s in specs])
                used.update(s.split("[")[0] for s in specs)
    for name, tensor in state_dict.items():
        if name.startswith("vision_embeddings.patch_embedding."):
            leaf = name.rsplit(".", 1)[1]
            if leaf == "weight" and embed_proj_type == "linear":
                tensor = tensor.reshape(tensor.shape[0], -1)
            out[f"embeds.proj.{leaf}"] = tensor
            used.add(name)
            continue
        for pattern, template in RENAMES:
            if re.match(pattern, name):
                out[re.sub(pattern, template, name)] = tensor
                used.add(name)
                break
    unmapped = [k for k in state_dict if k not in used and not k.startswith(TEXT_ONLY_PREFIXES)]
    if unmapped:
        raise KeyError(f"GenLIP tensors with no timm counterpart in the table: {unmapped}")
    return out
