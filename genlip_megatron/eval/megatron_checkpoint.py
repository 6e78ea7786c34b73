"""Recognise training checkpoints and read how a run was set up (for eval defaults).

The weights themselves are read by `eval.loading.load_checkpoint_model` through conversion's
checkpoint reader.
"""

from __future__ import annotations

import os

from genlip_megatron.config.load import load_config

CONFIG_NAME = "config.yaml"  # written into every checkpoint folder by checkpoint/sharded.py
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


def run_defaults(path: str) -> dict:
    """What evaluating this checkpoint should default to, from how it was trained: image_size,
    prompt, max_caption_tokens and the dataset's tokenizer.json (when that file still exists)."""
    cfg = load_config(os.path.join(resolve_checkpoint(path), CONFIG_NAME))
    tokenizer = os.path.join(os.path.dirname(os.path.abspath(cfg.data.manifest)), "tokenizer.json")
    return {"image_size": cfg.data.image_size, "prompt": cfg.data.prompt,
            "max_caption_tokens": cfg.data.max_caption_tokens,
            "tokenizer": tokenizer if cfg.data.manifest and os.path.isfile(tokenizer) else None}
