"""Hugging Face GenLIP folder (official weights or our export) -> megatron-core training checkpoint.

The result loads into the trainer under the requested layout: the run config saved in OUT (the
checkpoint folder's config file, checkpoint/run_dir.py) already says `checkpoint.load=OUT
checkpoint.finetune=true` (weights only: optimizer, schedule and data start fresh), so
`genlip train <that file> data.manifest=... checkpoint.dir=...` continues from the weights; any other run config can point at OUT the same way (e.g. stage 2 starting from stage 1).
The saved config is validated here, so an official config.json never needs a hand edit.

How: dist_checkpointing stores every tensor under its GLOBAL name and shape, and reshards on load, so
the files do not depend on the layout that wrote them, with one exception: the vocabulary rows are
padded to a multiple of make_vocab_size_divisible_by x TP. So one CPU process (a world of one, TP1
PP1) builds the megatron-core model with the vocabulary padded for the TARGET TP, loads the mapped
weights (convert.mcore_names) and saves its own sharded_state_dict through training's writer (checkpoint/sharded.py `write_checkpoint`). --tp/--pp also validate
that the model splits.

Only the local layer spec is written (the TE spec fuses the pre-norms into the linears: another name
set, and TE does not build on CPU).
"""

from __future__ import annotations

import dataclasses
import os
import socket

import torch

from genlip_megatron.checkpoint.reader import ConversionError
from genlip_megatron.checkpoint.run_dir import is_checkpoint_folder
from genlip_megatron.config.load import load_config
from genlip_megatron.config.schema import Config, padded_vocab_size
from genlip_megatron.config.validate import validate
from genlip_megatron.convert.hf_config import genlip_model_config
from genlip_megatron.convert.hf_reader import iter_tensors, read_hf_config
from genlip_megatron.convert.mcore_names import hf_to_mcore
from genlip_megatron.convert.output_folder import staged_output
from genlip_megatron.hf.configuration_genlip import GenLIPConfig
from genlip_megatron.objectives import registry


def read_hf_weights(folder: str, config: GenLIPConfig) -> dict[str, torch.Tensor]:
    """All tensors, checked against the names and shapes `config` implies (one-line refusal)."""
    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GenLIPModel(config).state_dict().items()}
    tensors = dict(iter_tensors(folder))
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        raise ConversionError(f"{folder}: tensors do not match config.json: missing {missing[:3]}, "
                              f"unexpected {unknown[:3]} (a checkpoint of another model?)")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ConversionError(f"{folder}: {key} has shape {tuple(tensors[key].shape)}, config.json implies {shape}")
        if tensors[key].dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConversionError(f"{folder}: {key} has unsupported dtype {tensors[key].dtype}")
    return tensors


STAGE1_PRESETS = ("genlip_l16", "genlip_so16", "genlip_g16")  # one per official model config


def default_base(config: GenLIPConfig) -> str | None:
    """The stage-1 preset of exactly this model shape (an official config.json), else None."""
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
             config.patch_size, config.text_embed_dim, config.vocab_size)
    for name in STAGE1_PRESETS:
        m = load_config(name).model
        if shape == (m.hidden_size, m.num_layers, m.num_attention_heads, m.ffn_hidden_size, m.patch_size,
                     m.text_embed_dim or m.hidden_size, m.vocab_size):
            return name
    return None


def run_config_from_hf(config: GenLIPConfig, base: str | None, tp: int, pp: int, vpp: int | None,
                       checkpoint: str | None = None, objective: str | None = None) -> Config:
    """The run config: `base` (preset or YAML; default: the stage-1 preset of the same model shape,
    else the schema defaults) with the model section taken from config.json, the parallel layout
    from the arguments and, when `checkpoint` is given, `checkpoint.load` pointing at it (weights
    only), so training from the saved config continues from the converted weights with no edit."""
    base = base or default_base(config)
    cfg = load_config(base) if base else Config()
    if objective is None:  # the objective whose export this model_type is
        objective = registry.spec_for_hf_model_type(config.model_type, importing=True)[0]
    m = genlip_model_config(config, cfg.model, objective)
    p = dataclasses.replace(cfg.parallel, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                            virtual_pipeline_model_parallel_size=vpp)
    if m.num_attention_heads % tp or m.ffn_hidden_size % tp:
        raise ConversionError(f"--tp {tp} does not divide {m.num_attention_heads} heads / ffn {m.ffn_hidden_size}")
    if m.num_layers % (pp * (vpp or 1)):
        raise ConversionError(f"{m.num_layers} layers do not split into --pp {pp} x --vpp {vpp or 1} stages")
    cfg = dataclasses.replace(cfg, model=m, parallel=p)
    if checkpoint is not None:
        cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(
            cfg.checkpoint, load=os.path.abspath(checkpoint), finetune=True))
    problems = validate(cfg)
    if problems:
        raise ConversionError("the run config would not train: " + "; ".join(problems))
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_single_process(full: dict, cfg: Config, padded: int, out: str, source: str) -> None:
    """World of one: build the whole model at TP1 PP1, load `full`, save like training does."""
    from genlip_megatron.checkpoint.sharded import common_state, sharding_metadata, write_checkpoint
    from genlip_megatron.convert.mcore_names import shard_for_model
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed

    single = dataclasses.replace(
        cfg, parallel=dataclasses.replace(cfg.parallel, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                          virtual_pipeline_model_parallel_size=None, sequence_parallel=False),
        train=dataclasses.replace(cfg.train, device="cpu", precision="fp32"),
        model=dataclasses.replace(cfg.model, recompute="none"))
    init_distributed(0, 1, "127.0.0.1", _free_port(), device="cpu", seed=cfg.train.seed)
    try:
        model = GenLIPModel(genlip_transformer_config(single), single.model, padded)
        state = {k: v.float() for k, v in shard_for_model(full, model, 0, 1).items()}
        result = model.load_state_dict(state, strict=False)
        left = [k for k in result.missing_keys + result.unexpected_keys if not k.endswith("_extra_state")]
        if left:
            raise ConversionError(f"mapped weights do not fit the megatron-core model: {left[:3]}")
        imported = {"hf_folder": os.path.abspath(source),
                    "target_layout": {"tp": cfg.parallel.tensor_model_parallel_size,
                                      "pp": cfg.parallel.pipeline_model_parallel_size,
                                      "vpp": cfg.parallel.virtual_pipeline_model_parallel_size}}
        state = {"model": model.sharded_state_dict(metadata=sharding_metadata()),
                 **common_state(cfg, 0, counters={}, imported_from=imported)}
        write_checkpoint(out, state, cfg)
    finally:
        destroy_distributed()


def import_from_hf(folder: str, out: str, *, tp: int = 1, pp: int = 1, vpp: int | None = None,
                   base_config: str | None = None, objective: str | None = None) -> dict:
    """Convert the HF folder into the checkpoint folder `out` (must not hold a checkpoint yet)."""
    config = read_hf_config(folder)
    tensors = read_hf_weights(folder, config)
    cfg = run_config_from_hf(config, base_config, tp, pp, vpp, checkpoint=out, objective=objective)
    if is_checkpoint_folder(out):
        raise ConversionError(f"{out} already holds a checkpoint; choose an empty folder")
    padded = padded_vocab_size(cfg.model, tp)
    full = hf_to_mcore(tensors, num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                       padded_vocab=padded, layer_spec="local")
    del tensors
    with staged_output(out, is_previous=lambda f: False) as stage:  # never replaces a checkpoint
        _save_single_process(full, cfg, padded, stage, folder)
    return {"checkpoint": out, "tp": tp, "pp": pp, "vpp": vpp, "padded_vocab": padded,
            "tensors": len(full), "resume_with": f"checkpoint.load={out} checkpoint.finetune=true"}
