"""`genlip shards info | verify | show`: look at a merged dataset without training on it."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from data_tools.unit import TOKEN_BIN_EDGES
from genlip_megatron.data.manifest import Manifest, load_tokenizer, open_dataset
from genlip_megatron.data.shards import ShardError, ShardReader, verify_shard


def dataset_info(manifest_path: str) -> dict:
    """Counts, sizes, caption-length histogram (from every shard's index) and reject reasons."""
    manifest = Manifest.load(manifest_path)
    edges = np.array(TOKEN_BIN_EDGES)
    hist = np.zeros(len(edges), dtype=np.int64)
    image_bytes = tokens = 0
    for s in range(len(manifest.shards)):
        index = ShardReader(manifest.shard_prefix(s)).index
        counts = index.token_counts
        hist += np.bincount(np.searchsorted(edges, counts, side="right") - 1, minlength=len(edges))
        image_bytes += int(index.image_lengths.sum())
        tokens += int(counts.sum())
    n = manifest.num_samples
    return {
        "samples": n,
        "shards": len(manifest.shards),
        "bin_bytes": sum(s.bin_bytes for s in manifest.shards),
        "mean_image_bytes": image_bytes / max(n, 1),
        "mean_caption_tokens": tokens / max(n, 1),
        "token_hist": {"edges": TOKEN_BIN_EDGES, "counts": hist.tolist()},
        "rejects": manifest.rejects,
        "rejected": sum(manifest.rejects.values()),
        "tokenizer": manifest.tokenizer,
        "prompt_template": manifest.prompt_template,
    }


def format_info(info: dict) -> str:
    lines = [
        f"samples {info['samples']:,} in {info['shards']} shards, {info['bin_bytes'] / 1e6:,.1f} MB",
        f"mean image {info['mean_image_bytes'] / 1e3:,.1f} KB, mean caption "
        f"{info['mean_caption_tokens']:.1f} tokens",
        f"tokenizer {info['tokenizer']['name']} ({info['tokenizer']['sha256'][:12]}), "
        f"vocab {info['tokenizer']['vocab_size']:,}; prompt {info['prompt_template']!r}",
        "caption tokens:",
    ]
    edges, counts = info["token_hist"]["edges"], info["token_hist"]["counts"]
    top = max(counts) or 1
    for i, count in enumerate(counts):
        upper = f"{edges[i + 1] - 1}" if i + 1 < len(edges) else "+"
        lines.append(f"  {edges[i]:>5}-{upper:<5} {count:>10,} {'#' * round(40 * count / top)}")
    lines.append(f"rejected {info['rejected']:,}:")
    lines += [f"  {reason:<24} {count:>10,}" for reason, count in info["rejects"].items()]
    return "\n".join(lines)


def verify_dataset(manifest_path: str) -> list[str]:
    """Check the tokenizer.json against the manifest's hash, re-hash every shard against its index
    and the manifest, range-check every token id; return one line per problem."""
    manifest = Manifest.load(manifest_path)
    problems = []
    vocab_size = manifest.tokenizer["vocab_size"]
    try:
        vocab_size = min(vocab_size, load_tokenizer(manifest).vocab_size)
    except (ShardError, ValueError) as exc:
        problems.append(str(exc))
    for s, entry in enumerate(manifest.shards):
        prefix = manifest.shard_prefix(s)
        try:
            count = verify_shard(prefix, vocab_size=vocab_size)
            with open(prefix + ".idx", "rb") as f:
                idx_sha = hashlib.sha256(f.read()).hexdigest()
            reader = ShardReader(prefix)
            if idx_sha != entry.idx_sha256 or reader.index.bin_sha256 != entry.bin_sha256:
                raise ShardError(f"{prefix}: sha256 differs from the manifest")
            if count != entry.num_samples:
                raise ShardError(f"{prefix}: {count} samples, manifest says {entry.num_samples}")
            if reader.tokenizer_sha256 != manifest.tokenizer["sha256"]:
                raise ShardError(f"{prefix}.idx: made with another tokenizer")
        except ShardError as exc:
            problems.append(str(exc))
    return problems


def show_sample(manifest_path: str, i: int, out_dir: str) -> tuple[str, str]:
    """Write sample i's image (`sample-<i>.jpg`) and caption (`sample-<i>.txt`); return both paths."""
    dataset = open_dataset(manifest_path)
    if not 0 <= i < len(dataset):
        raise ShardError(f"{manifest_path}: no sample {i} (the dataset has {len(dataset)})")
    sample = dataset[i]
    caption = load_tokenizer(dataset.manifest).decode(sample.tokens.tolist())
    os.makedirs(out_dir, exist_ok=True)
    image_path = os.path.join(out_dir, f"sample-{i}.jpg")
    text_path = os.path.join(out_dir, f"sample-{i}.txt")
    with open(image_path, "wb") as f:
        f.write(sample.image.tobytes())
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(f"key: {sample.key}\nsize: {sample.width}x{sample.height}\n"
                f"tokens: {sample.tokens.tolist()}\ncaption: {caption}\n")
    return image_path, text_path
