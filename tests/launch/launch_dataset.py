"""A dataset that satisfies submission checks without shards: a manifest naming a real tokenizer.

Submission reads a dataset's manifest and tokenizer (it must exist and fit model.vocab_size), never
its shards, so tests of job rendering need no images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from genlip_megatron.data.manifest import FORMAT, FORMAT_VERSION
from genlip_megatron.data.tokenizer import Tokenizer, train_bpe


def empty_dataset(folder) -> Path:
    """Write folder/tokenizer.json and folder/manifest.json (no shards); return the manifest's path."""
    os.makedirs(folder, exist_ok=True)
    tokenizer_path = os.path.join(folder, "tokenizer.json")
    train_bpe([f"a photo of thing {i}" for i in range(40)], 280, tokenizer_path, min_frequency=1)
    tok = Tokenizer.from_file(tokenizer_path)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "prompt_template": "describe",
                "settings": {}, "shards": [], "rejects": {},
                "tokenizer": {**tok.identity, "file": "tokenizer.json", "vocab_size": tok.vocab_size,
                              "end_ids": tok.end_ids, "pad_id": tok.pad_id}}
    path = os.path.join(folder, "manifest.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return Path(path)
