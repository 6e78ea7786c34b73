"""Process one unit: input -> caption + image checks -> tokens -> one shard + a JSON report.

A unit is done when its report exists, was made with the same settings, and its shard verifies
against the report's hash; `process_unit` then returns that report without touching the files.
Reports hold no timings or host names, so a resumed build produces byte-identical output.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from data_tools.captions import CaptionReject, CaptionSettings, select_caption
from data_tools.sources import RawSample, SourceSettings, Unit, iter_unit
from genlip_megatron.data.image_codec import ImageReject, ImageSettings, prepare_image
from genlip_megatron.data.shards import ShardError, ShardWriter, fsync_dir, verify_shard
from genlip_megatron.data.tokenizer import Tokenizer

# Caption-length histogram bins (tokens): a fixed grid so reports of any size merge by addition.
TOKEN_BIN_EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]
MAX_EXAMPLES = 20  # rejected samples named in a report, per unit


@dataclass(frozen=True)
class BuildSettings:
    source: SourceSettings = field(default_factory=SourceSettings)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    image: ImageSettings = field(default_factory=ImageSettings)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def token_bin(n: int) -> int:
    return bisect.bisect_right(TOKEN_BIN_EDGES, n) - 1


def report_path(out_dir: str, unit: Unit) -> str:
    return os.path.join(out_dir, unit.name + ".report.json")


def write_json_atomic(path: str, data: dict, shared: bool = False) -> None:
    """fsync + rename. `shared`: several processes (SLURM tasks) may write the same file at once,
    so each uses its own temporary name; otherwise a fixed name lets a re-run overwrite leftovers."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp" if shared else path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def finished_report(out_dir: str, unit: Unit, settings_sha: str, tokenizer_sha: str) -> dict | None:
    """The unit's report if its output is complete and verifies, else None (the unit must run)."""
    try:
        with open(report_path(out_dir, unit), encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    if report.get("settings_sha256") != settings_sha or report.get("tokenizer_sha256") != tokenizer_sha:
        return None
    try:
        count = verify_shard(os.path.join(out_dir, unit.name))
    except ShardError:
        return None
    return report if count == report.get("num_samples") else None


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Tokenizer:
    return Tokenizer.from_file(path)


def process_unit(unit: Unit, out_dir: str, tokenizer_path: str, settings: BuildSettings) -> dict:
    tokenizer = _tokenizer(tokenizer_path)
    settings_sha = settings.fingerprint()
    done = finished_report(out_dir, unit, settings_sha, tokenizer.sha256)
    if done is not None:
        return {**done, "skipped": True}
    rejects, repairs, hist = Counter(), Counter(), [0] * len(TOKEN_BIN_EDGES)
    examples, errors = [], []
    reencoded = input_bytes = 0

    def reject(key: str, reason: str, detail: str = "") -> None:
        rejects[reason] += 1
        if len(examples) < MAX_EXAMPLES:
            examples.append([key, reason, detail[:200]])

    with ShardWriter(os.path.join(out_dir, unit.name), tokenizer.sha256) as writer:
        for item in iter_unit(unit, settings.source):
            if not isinstance(item, RawSample):
                if item.reason == "input_error":  # a file-level problem, not a sample
                    errors.append(item.detail)
                else:
                    reject(item.key, item.reason, item.detail)
                continue
            input_bytes += len(item.image)
            try:
                caption, fixes = select_caption(item.key, item.captions, settings.caption)
                tokens = tokenizer.encode(caption)
                if len(tokens) > settings.caption.max_tokens:
                    raise CaptionReject("caption_too_many_tokens", f"{len(tokens)} tokens")
                image = prepare_image(item.image, settings.image)
            except (CaptionReject, ImageReject) as exc:
                reject(item.key, exc.reason, str(exc))
                continue
            repairs.update(fixes)
            reencoded += image.converted
            hist[token_bin(len(tokens))] += 1
            writer.add(item.key, image.jpeg, tokens, image.height, image.width)
        index = writer.close()
    report = {
        "unit": unit.name,
        "input": unit.path,
        "lines": [unit.start, unit.stop] if unit.kind == "jsonl" else None,
        "settings_sha256": settings_sha,
        "tokenizer_sha256": tokenizer.sha256,
        "num_samples": len(index),
        "bin_bytes": index.bin_size,
        "bin_sha256": index.bin_sha256,
        "input_image_bytes": input_bytes,
        "reencoded": reencoded,
        "rejects": dict(sorted(rejects.items())),
        "repairs": dict(sorted(repairs.items())),
        "token_hist": {"edges": TOKEN_BIN_EDGES, "counts": hist},
        "examples": examples,
        "errors": errors,
    }
    write_json_atomic(report_path(out_dir, unit), report)
    return {**report, "skipped": False}
