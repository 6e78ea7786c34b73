"""One name for a dataset and its tokenizer, wherever a user names them.

A dataset is a shard folder; `<folder>` and `<folder>/manifest.json` are the same name everywhere
(train, eval, caption, convert, submit). Its tokenizer is the file the manifest names, absolute or
relative to the manifest's folder - never to the working directory of whoever reads it.

A tokenizer argument takes any of: a `tokenizer.json`, a Hugging Face tokenizer folder (holding a
`tokenizer.json`), or a dataset (folder or manifest.json), which stands for the tokenizer it was
built with.

The model's vocabulary is checked against the tokenizer here too: smaller is a one-line error,
unset (`model.vocab_size: null`) takes the tokenizer's.
"""

from __future__ import annotations

import json
import os

from genlip_megatron.data.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest
from genlip_megatron.data.shards import ShardError
from genlip_megatron.data.tokenizer import Tokenizer
from genlip_megatron.errors import InputError


class DatasetRefError(InputError):
    """A dataset or tokenizer name that does not resolve; str() is one line naming the path."""


def manifest_file(ref: str) -> str:
    """A dataset folder or its manifest.json -> the absolute path of the manifest.json."""
    path = os.path.abspath(os.path.expanduser(ref))
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise DatasetRefError(f"{ref}: no dataset here (expected a shard folder holding {MANIFEST_NAME}, "
                              "or the manifest.json itself; `genlip shards build` writes both)")
    return path


def is_dataset(ref: str) -> bool:
    """Whether `ref` names a shard dataset (folder with a manifest.json, or a manifest.json)."""
    path = os.path.abspath(os.path.expanduser(ref))
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, MANIFEST_NAME))
    if not os.path.isfile(path) or not path.endswith(".json"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return '"genlip-shards"' in head or os.path.basename(path) == MANIFEST_NAME


def dataset_tokenizer_file(ref: str) -> str:
    """The tokenizer.json of dataset `ref`, as its manifest names it (relative to the manifest)."""
    path = manifest_file(ref)
    try:
        manifest = Manifest.load(path)
    except ShardError as exc:
        raise DatasetRefError(str(exc)) from None
    tokenizer = manifest.tokenizer_path
    if not os.path.isfile(tokenizer):
        raise DatasetRefError(f"{path}: its tokenizer {tokenizer} does not exist (the manifest names "
                              f"{manifest.tokenizer.get('file')!r}, relative to the manifest's folder)")
    return tokenizer


def tokenizer_file(ref: str) -> str:
    """A tokenizer argument -> the path of a tokenizer.json (see the module docstring for the forms)."""
    path = os.path.abspath(os.path.expanduser(ref))
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            return dataset_tokenizer_file(path)
        inner = os.path.join(path, TOKENIZER_NAME)
        if os.path.isfile(inner):
            return inner
        raise DatasetRefError(f"{ref}: a folder without {TOKENIZER_NAME} or {MANIFEST_NAME} (expected a "
                              "Hugging Face tokenizer folder or a shard dataset)")
    if not os.path.isfile(path):
        raise DatasetRefError(f"{ref}: no such tokenizer file or folder")
    if is_dataset(path):
        return dataset_tokenizer_file(path)
    return path


def load_tokenizer(ref: str) -> Tokenizer:
    """The Tokenizer a tokenizer argument names."""
    return Tokenizer.from_file(tokenizer_file(ref))


def run_tokenizer(cfg) -> tuple[str | None, str]:
    """(tokenizer.json of the run's training dataset, or None; why not, when None)."""
    if cfg.train.synthetic_data:
        return None, "the run trained on synthetic batches (no tokenizer)"
    if not cfg.data.manifest:
        return None, "the run's config names no data.manifest"
    try:
        return dataset_tokenizer_file(cfg.data.manifest), ""
    except DatasetRefError as exc:
        return None, str(exc)


def folder_tokenizer_file(folder: str) -> str | None:
    """The tokenizer.json inside an exported model folder, or None."""
    path = os.path.join(folder, TOKENIZER_NAME)
    return path if os.path.isfile(path) else None


def checked_vocab_size(vocab_size: int | None, tokenizer: Tokenizer, key: str = "model.vocab_size") -> int:
    """The model vocabulary to use with `tokenizer`: `vocab_size` when it holds every token, the
    tokenizer's own size when unset; a one-line error when it is smaller than the tokenizer's."""
    if vocab_size is None:
        return tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise DatasetRefError(
            f"{key}={vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens "
            f"({tokenizer.path or tokenizer.name}): set {key}={tokenizer.vocab_size} or larger, "
            f"or {key}=null to take it from the tokenizer")
    return vocab_size


def manifest_summary(ref: str) -> dict:
    """Samples and shards of a dataset, for banners (reads only the manifest)."""
    with open(manifest_file(ref), encoding="utf-8") as f:
        data = json.load(f)
    return {"samples": int(data.get("num_samples", 0)), "shards": len(data.get("shards", []))}
