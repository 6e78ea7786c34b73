"""What a run reads, pinned before it starts: dataset names made absolute and canonical, and the
model vocabulary checked against (or taken from) the training dataset's tokenizer.

The resolved config is what checkpoints save, so evaluation, captioning, conversion and resuming
find the same dataset and tokenizer from any working directory.
"""

from __future__ import annotations

import importlib.util
import os

from genlip_megatron.config.load import ConfigError
from genlip_megatron.data.dataset_ref import (
    DatasetRefError,
    checked_vocab_size,
    dataset_tokenizer_file,
    manifest_file,
)
from genlip_megatron.data.tokenizer import Tokenizer


def _dataset(cfg, key: str, errors: list[str]) -> None:
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    if not value:
        return
    try:
        setattr(getattr(cfg, section), name, manifest_file(value))
    except DatasetRefError as exc:
        errors.append(f"{key}: {exc}")


def resolve_run_inputs(cfg):
    """Resolve `cfg` in place (idempotent) and return it; ConfigError lists every problem."""
    errors: list[str] = []
    for key in ("data.manifest", "data.eval_manifest"):
        _dataset(cfg, key, errors)
    for key in ("checkpoint.dir", "checkpoint.load"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            setattr(getattr(cfg, section), name, os.path.abspath(os.path.expanduser(value)))
    if cfg.logging.wandb_project and importlib.util.find_spec("wandb") is None:
        errors.append(f"logging.wandb_project={cfg.logging.wandb_project}: wandb is not installed "
                      "(pip install wandb), or leave logging.wandb_project empty")
    from genlip_megatron.training.end_of_run import input_problems

    errors += input_problems(cfg)
    if errors:
        raise ConfigError(errors)
    if cfg.train.synthetic_data:
        if cfg.model.vocab_size is None:
            raise ConfigError(["model.vocab_size is unset and train.synthetic_data=true has no tokenizer "
                               "to take it from: set model.vocab_size"])
        return cfg
    if not cfg.data.manifest:
        raise ConfigError(["data.manifest is empty: name a dataset (a shard folder or its manifest.json), "
                           "or set train.synthetic_data=true to train on synthetic batches"])
    tokenizers = {}
    for key in ("data.manifest", "data.eval_manifest"):
        ref = getattr(cfg.data, key.split(".")[1])
        if not ref:
            continue
        try:
            tokenizers[key] = Tokenizer.from_file(dataset_tokenizer_file(ref))
        except (DatasetRefError, ValueError) as exc:
            raise ConfigError([f"{key}: {exc}"]) from None
    train_tok = tokenizers["data.manifest"]
    eval_tok = tokenizers.get("data.eval_manifest")
    if eval_tok is not None and eval_tok.sha256 != train_tok.sha256:
        raise ConfigError([f"data.eval_manifest: built with tokenizer {eval_tok.name} ({eval_tok.sha256[:12]}), "
                           f"but data.manifest with {train_tok.name} ({train_tok.sha256[:12]}): "
                           "a held-out loss needs the training tokenizer"])
    try:
        cfg.model.vocab_size = checked_vocab_size(cfg.model.vocab_size, train_tok)
    except DatasetRefError as exc:
        raise ConfigError([str(exc)]) from None
    return cfg
