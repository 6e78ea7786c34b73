"""Read a training checkpoint (megatron dist_checkpointing) into the plain-torch GenLIP, in one process.

How: join a world of one CPU process, build the megatron-core model with TP = PP = 1 from the
checkpoint's own config.yaml, let dist_checkpointing reshard the saved weights into it (it does so
from any training layout), take its now FULL state dict and map it with `convert.mcore_names`.
Optimizer, scheduler and data state are not read.

NOTE: a stop-gap until conversion offers a checkpoint -> full state dict function (loading.py looks
for it first). It reuses training's own model builder, so it can never disagree with what was saved.
It initialises and tears down torch.distributed: do not call it inside a live process group.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import torch

from genlip_megatron.config.load import load_config
from genlip_megatron.eval.loading import model_from_mcore_state_dict

CONFIG_NAME = "config.yaml"  # written into every checkpoint folder by training/checkpoint.py
LATEST_NAME = "latest"


def resolve_checkpoint(path: str) -> str:
    """A run directory (follow its `latest` marker) or a checkpoint folder -> the checkpoint folder."""
    marker = os.path.join(path, LATEST_NAME)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            path = os.path.join(path, f.read().strip())
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise ValueError(f"{path}: not a training checkpoint (no {CONFIG_NAME}) nor a run directory "
                         f"with a `{LATEST_NAME}` marker")
    return path


def is_megatron_checkpoint(path: str) -> bool:
    try:
        resolve_checkpoint(path)
        return True
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_config(cfg):
    """The saved config, made to build one fp32 CPU model that holds every layer."""
    return dataclasses.replace(
        cfg,
        parallel=dataclasses.replace(cfg.parallel, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                     virtual_pipeline_model_parallel_size=None, context_parallel_size=1,
                                     sequence_parallel=False),
        model=dataclasses.replace(cfg.model, layer_spec="local", recompute="none"),
        train=dataclasses.replace(cfg.train, device="cpu", precision="fp32"),
    )


def load_megatron_checkpoint(path: str):
    """Run directory or checkpoint folder -> (HF GenLIPModel in eval mode, the run's Config)."""
    from megatron.core import dist_checkpointing

    from genlip_megatron.model.transformer_config import genlip_transformer_config
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed
    from genlip_megatron.training.checkpoint import sharding_metadata
    from genlip_megatron.training.model_setup import build_model_chunks

    folder = resolve_checkpoint(path)
    cfg = load_config(os.path.join(folder, CONFIG_NAME))
    if cfg.model.layer_spec != "local":
        # TE fuses the pre-norms into the next linear; the saved names follow the TE layout.
        raise ValueError(f"{folder}: reading a layer_spec={cfg.model.layer_spec!r} checkpoint on CPU "
                         "needs the conversion tool (genlip convert)")
    local = _single_process_config(cfg)
    init_distributed(0, 1, "127.0.0.1", _free_port(), device="cpu", seed=local.train.seed)
    try:
        chunk = build_model_chunks(local, genlip_transformer_config(local))[0]
        loaded = dist_checkpointing.load({"model": chunk.sharded_state_dict(metadata=sharding_metadata())},
                                         folder)
        chunk.load_state_dict(loaded["model"])
        state = {k: v.detach().to(torch.float32) for k, v in chunk.state_dict().items()
                 if isinstance(v, torch.Tensor)}
    finally:
        destroy_distributed()
    return model_from_mcore_state_dict(state, local.model), cfg


def run_defaults(path: str) -> dict:
    """What evaluating this checkpoint should default to, from how it was trained: image_size,
    prompt, max_caption_tokens and the dataset's tokenizer.json (when that file still exists)."""
    cfg = load_config(os.path.join(resolve_checkpoint(path), CONFIG_NAME))
    tokenizer = os.path.join(os.path.dirname(os.path.abspath(cfg.data.manifest)), "tokenizer.json")
    return {"image_size": cfg.data.image_size, "prompt": cfg.data.prompt,
            "max_caption_tokens": cfg.data.max_caption_tokens,
            "tokenizer": tokenizer if cfg.data.manifest and os.path.isfile(tokenizer) else None}
