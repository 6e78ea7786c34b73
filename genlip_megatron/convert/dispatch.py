"""Which objective converts what: a training checkpoint goes to the spec of the objective its config
names (ObjectiveSpec.export / check_checkpoint), a Hugging Face folder to the spec whose export has
its `model_type` (ObjectiveSpec.import_hf). `genlip convert` and evaluation read checkpoints here.
"""

from __future__ import annotations

import os

import torch

from genlip_megatron.checkpoint.reader import CheckpointReader, ConversionError
from genlip_megatron.objectives import registry

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; choose from {', '.join(sorted(DTYPES))}")
    return DTYPES.get(dtype)


def open_checkpoint(checkpoint: str):
    """Run directory or checkpoint folder -> (reader, the run's Config, its objective's spec), after
    the spec confirmed the stored tensors are those the config describes (one-line refusal if not)."""
    reader = CheckpointReader(checkpoint)
    if reader.common.get("format_version") is None:
        raise ConversionError(f"{reader.folder}: common.pt has no format_version (not a genlip-megatron checkpoint)")
    cfg = reader.run_config()
    try:
        spec = registry.spec_for(cfg)
    except ValueError as exc:
        raise ConversionError(f"{reader.folder}: {exc}") from None
    spec.check_checkpoint(reader, cfg)
    return reader, cfg, spec


def export_checkpoint(target: str, checkpoint: str, out: str, *, dtype: str | None = None, **options) -> dict:
    """`genlip convert to-<target>` of a training checkpoint: what the objective's spec writes."""
    reader, cfg, spec = open_checkpoint(checkpoint)
    if target not in spec.export_targets:
        raise ConversionError(f"{reader.folder}: a checkpoint of objective {cfg.model.objective!r} exports to "
                              f"{', '.join(spec.export_targets) or 'nothing'}, not {target}")
    return spec.export(target, reader, cfg, out, dtype=torch_dtype(dtype), **options)


def read_full_state_dict(checkpoint: str):
    """(FULL megatron-core state dict {global name: tensor as stored}, the run's Config, its spec):
    the whole model in memory, any saving layout, no process group."""
    reader, cfg, spec = open_checkpoint(checkpoint)
    return {name: reader.load(name) for name in reader}, cfg, spec


def hf_model_type(folder: str) -> str:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{folder}: no config.json (not a Hugging Face model folder)")
    from genlip_megatron.convert.hf_reader import read_json_object

    try:
        return str(read_json_object(path).get("model_type"))
    except OSError as exc:
        raise ConversionError(f"{path}: not a readable JSON config ({exc})") from None


def import_hf_folder(folder: str, out: str, **options) -> dict:
    """`genlip convert from-hf`: the objective whose export has this folder's model_type imports it."""
    try:
        name, spec = registry.spec_for_hf_model_type(hf_model_type(folder), importing=True)
    except ValueError as exc:
        raise ConversionError(f"{folder}: {exc}") from None
    return spec.import_hf(folder, out, objective=name, **options)
