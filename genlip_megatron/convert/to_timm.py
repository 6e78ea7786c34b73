"""GenLIP image trunk -> timm NaFlexVit (timm >= 1.0.31): a safetensors state dict and its model kwargs.

Source: an HF GenLIP folder (official weights or our export) or a megatron-core checkpoint (read with
checkpoint_reader, mapped to HF names first). The text side (embeddings, in_proj, proj, lm_head) is
dropped; the renames and fusions are `convert.timm_names`. Output folder:
    model.safetensors     timm names (blocks.N.attn.qkv, attn.gate, mlp.fc1 [gate ; value], ...)
    timm_config.json      {"model_cls": "timm.models.naflexvit.NaFlexVit", "cfg": NaFlexVitCfg kwargs}
Use:  NaFlexVit(NaFlexVitCfg(**cfg), num_classes=0).load_state_dict(load_file(...))

NOTE: the trunk is held in memory (timm's fused qkv needs three HF tensors of a layer at once); only
`to-hf` streams.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from genlip_megatron.checkpoint.reader import ConversionError
from genlip_megatron.convert.output_folder import staged_output
from genlip_megatron.convert.timm_names import TEXT_ONLY_PREFIXES, naflexvit_kwargs, to_timm_state_dict

TIMM_CONFIG = "timm_config.json"


def _trunk_from_hf_folder(folder: str):
    from genlip_megatron.convert.hf_reader import iter_tensors, read_hf_config

    config = read_hf_config(folder)
    tensors = dict(iter_tensors(folder, keep=lambda key: not key.startswith(TEXT_ONLY_PREFIXES)))
    return config, tensors


def trunk_from_checkpoint(reader, cfg):
    """(GenLIPConfig, HF-named trunk tensors) of a checked GenLIP checkpoint."""
    from genlip_megatron.convert.to_hf import hf_config, hf_tensors

    tensors = {}
    for group in hf_tensors(reader, cfg):
        tensors.update({k: v.clone() for k, v in group.items() if not k.startswith(TEXT_ONLY_PREFIXES)})
    return hf_config(cfg), tensors


def export_to_timm(source: str, out: str, *, embed_proj_type: str = "conv", dtype: str | None = None) -> dict:
    """Write the trunk of `source` (HF GenLIP folder, or a training checkpoint whose objective exports
    to timm) as a timm NaFlexVit into `out`."""
    from genlip_megatron.convert.dispatch import export_checkpoint, torch_dtype

    if not os.path.isfile(os.path.join(source, "config.json")):
        return export_checkpoint("timm", source, out, dtype=dtype, embed_proj_type=embed_proj_type)
    config, tensors = _trunk_from_hf_folder(source)
    return write_timm_folder(source, config, tensors, out, embed_proj_type=embed_proj_type, dtype=torch_dtype(dtype))


def write_timm_folder(source: str, config, tensors: dict, out: str, *, embed_proj_type: str = "conv",
                      dtype: torch.dtype | None = None) -> dict:
    """The timm folder of a GenLIP trunk (HF names); `source` names where it came from in errors."""
    try:
        state = to_timm_state_dict(tensors, config.hidden_size, embed_proj_type=embed_proj_type)
    except KeyError as exc:
        raise ConversionError(f"{source}: {exc.args[0]}") from None
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    kwargs = naflexvit_kwargs(config) | {"embed_proj_type": embed_proj_type}
    with staged_output(out, is_previous=lambda f: os.path.isfile(os.path.join(f, TIMM_CONFIG))) as stage:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(stage, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(stage, TIMM_CONFIG), "w", encoding="utf-8") as f:
            json.dump({"model_cls": "timm.models.naflexvit.NaFlexVit", "min_timm_version": "1.0.31",
                       "cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}, f,
                      indent=2)
    return {"folder": out, "tensors": len(state), "cfg": kwargs}
