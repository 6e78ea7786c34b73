"""Process one unit: input -> caption + image checks -> tokens -> one shard + a JSON report.

A unit is done when its report exists, was made with the same settings, and its shard verifies
against the report's hash; `process_unit` then returns that report without touching the files.
Reports hold no timings or host names, so a resumed build produces byte-identical output.

One reject path: whatever one sample does (a caption, image or token problem, or any exception
its bytes provoke anywhere in preparing it) becomes a counted reject with a reason, and the unit
goes on; a reader that fails mid-file ends the unit with the samples read so far and a one-line
error naming the file. Only the output itself failing (disk full, read-only) fails a unit.
Two processes never build the same unit at once (a lock per unit, held in `.build.lock`).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Iterator

from data_tools.captions import CaptionReject, CaptionSettings, select_caption
from data_tools.sources import RawSample, SampleProblem, SourceSettings, Unit, iter_unit
from genlip_megatron.data.image_codec import ImageReject, ImageSettings, PreparedImage, prepare_image
from genlip_megatron.data.input_files import InputFileError, one_line
from genlip_megatron.data.shards import ShardError, ShardWriter, fsync_dir, verify_shard
from genlip_megatron.data.tokenizer import Tokenizer

# Caption-length histogram bins (tokens): a fixed grid so reports of any size merge by addition.
TOKEN_BIN_EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]
MAX_EXAMPLES = 20  # rejected samples named in a report, per unit
# Bumped whenever the same settings would make different shards (2: EXIF orientation applied,
# bounded readers), so units built by an older builder are rebuilt, never mixed in.
BUILDER_VERSION = 2
LOCK_NAME = ".build.lock"


@dataclass(frozen=True)
class BuildSettings:
    source: SourceSettings = field(default_factory=SourceSettings)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    image: ImageSettings = field(default_factory=ImageSettings)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        return settings_fingerprint(self.to_dict())


def settings_fingerprint(settings: dict) -> str:
    """Identity of the settings a unit was built with (`settings_sha256` in its report)."""
    material = {"builder_version": BUILDER_VERSION, "settings": settings}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


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
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(report, dict):
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


@contextlib.contextmanager
def unit_lock(out_dir: str, unit: Unit) -> Iterator[None]:
    """Exclusive right to build `unit`: a POSIX byte-range lock on byte k of `.build.lock` for
    unit k (one file for the whole folder; works on NFS and Lustre). A second process building
    the same unit (a re-queued SLURM task, a second command) waits, then finds it done."""
    number = int(unit.name.rsplit("-", 1)[-1])
    fd = os.open(os.path.join(out_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, number)
        yield
    finally:
        os.close(fd)  # releases the lock


def _prepare_sample(sample: RawSample, tokenizer: Tokenizer,
                    settings: BuildSettings) -> tuple[list[int], PreparedImage, dict]:
    caption, fixes = select_caption(sample.key, sample.captions, settings.caption)
    tokens = tokenizer.encode(caption)
    if settings.caption.max_tokens is not None and len(tokens) > settings.caption.max_tokens:
        raise CaptionReject("caption_too_many_tokens", f"{len(tokens)} tokens")
    if tokens and not 0 <= min(tokens) <= max(tokens) < tokenizer.vocab_size:
        raise SampleProblem("token_out_of_range", f"ids {min(tokens)}..{max(tokens)}, vocabulary "
                            f"{tokenizer.vocab_size}")
    return tokens, prepare_image(sample.image, settings.image), fixes


def process_unit(unit: Unit, out_dir: str, tokenizer_path: str, settings: BuildSettings) -> dict:
    with unit_lock(out_dir, unit):
        return _process_unit(unit, out_dir, tokenizer_path, settings)


def _process_unit(unit: Unit, out_dir: str, tokenizer_path: str, settings: BuildSettings) -> dict:
    tokenizer = _tokenizer(tokenizer_path)
    settings_sha = settings.fingerprint()
    done = finished_report(out_dir, unit, settings_sha, tokenizer.sha256)
    if done is not None:
        return {**done, "skipped": True}
    rejects, repairs, hist = Counter(), Counter(), [0] * len(TOKEN_BIN_EDGES)
    examples, errors = [], []
    reencoded = input_bytes = 0
    max_token_id = -1

    def reject(key: str, reason: str, detail: str = "") -> None:
        rejects[reason] += 1
        if len(examples) < MAX_EXAMPLES:
            examples.append([key[:200], reason, detail[:200]])

    with ShardWriter(os.path.join(out_dir, unit.name), tokenizer.sha256) as writer:
        items = iter_unit(unit, settings.source)
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except (OSError, InputFileError):
                raise  # the file system, not the input's bytes: fail the unit, a re-run retries it
            except Exception as exc:  # noqa: BLE001 - a reader bug on hostile bytes ends the file, not the unit
                errors.append(one_line(f"{unit.path}: reading stopped after {len(writer)} samples "
                                       f"({type(exc).__name__}: {exc})"))
                break
            if not isinstance(item, RawSample):
                if item.reason == "input_error":  # a file-level problem, not a sample
                    errors.append(one_line(item.detail))
                else:
                    reject(item.key, item.reason, item.detail)
                continue
            input_bytes += len(item.image)
            try:
                tokens, image, fixes = _prepare_sample(item, tokenizer, settings)
            except (SampleProblem, ImageReject) as exc:
                reject(item.key, exc.reason, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - nothing one sample does may fail its unit
                reject(item.key, "unexpected_error", f"{type(exc).__name__}: {exc}")
                continue
            repairs.update(fixes)
            reencoded += image.converted
            hist[token_bin(len(tokens))] += 1
            max_token_id = max(max_token_id, max(tokens, default=-1))
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
        "max_token_id": max_token_id,
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
