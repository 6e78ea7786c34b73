"""Input units and the samples they yield: WebDataset tars, parquet files, a JSONL of captions.

A unit is one independent piece of work (one input tar, one parquet file, or a range of JSONL
lines) that becomes one output shard. `iter_unit` streams a unit as `RawSample`s and `Reject`s;
the readers themselves live in tar_source.py and table_sources.py.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from genlip_megatron.data.input_files import InputFileError, count_lines, open_regular
from genlip_megatron.errors import InputError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
JSONL_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class Unit:
    name: str  # output shard name, e.g. "shard-000012"
    kind: str  # "tar" | "parquet" | "jsonl"
    path: str
    start: int = 0  # JSONL: first line (0-based) of this unit
    stop: int = -1  # JSONL: one past the last line; -1 = whole file


@dataclass(frozen=True)
class RawSample:
    key: str
    image: bytes
    captions: dict  # field name -> str | bytes | None (tar: "txt" is the .txt member)


@dataclass(frozen=True)
class Reject:
    key: str
    reason: str
    detail: str = ""


class SampleProblem(Exception):
    """One sample cannot be used. `reason` is its reject code in the unit's report; readers and
    unit.py turn it (and any other exception a sample causes) into a counted `Reject`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SourceSettings:
    image_field: str = "image"  # parquet column / JSONL key holding the image (bytes or path)
    key_field: str = "key"  # parquet column / JSONL key with a sample id (optional)
    image_root: Optional[str] = None  # JSONL: folder image paths are relative to (default: its own)
    max_member_bytes: int = 64 << 20  # larger tar members / image files are rejected unread
    jsonl_lines_per_unit: int = 10000

    def __post_init__(self):
        for name in ("image_field", "key_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"{name} must be a non-empty name, got {getattr(self, name)!r}")
        for name, flag in (("max_member_bytes", "--max-image-bytes"), ("jsonl_lines_per_unit", "--jsonl-lines-per-shard")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be a positive integer, got {value!r}")


Item = Union[RawSample, Reject]


def _kind(path: str) -> Optional[str]:
    lower = path.lower()
    for kind, suffixes in (("tar", TAR_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("jsonl", JSONL_SUFFIXES)):
        if lower.endswith(suffixes):
            return kind
    return None


def _regular(path: str) -> str:
    """Inputs are regular files: a FIFO or device named like an input would hang or never end."""
    if not os.path.isfile(path):  # follows symlinks: a link to a real file is fine
        raise InputError(f"{path}: not a regular file (a FIFO, device or broken link cannot be an input)")
    return path


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, folders (searched recursively for known suffixes) and globs -> sorted unique files."""
    found: set[str] = set()
    for item in inputs:
        if os.path.isdir(item):
            for root, _, files in os.walk(item):
                found.update(_regular(os.path.join(root, f)) for f in files if _kind(f))
        elif os.path.lexists(item):
            if _kind(item) is None:
                raise InputError(f"{item}: unknown input type (expected .tar, .parquet or .jsonl)")
            found.add(_regular(item))
        else:
            matches = [_regular(m) for m in glob.glob(item) if _kind(m)]
            if not matches:
                raise InputError(f"{item}: no such input file, folder or glob match")
            found.update(matches)
    return sorted(os.path.abspath(p) for p in found)


def plan_units(inputs: list[str], settings: SourceSettings) -> list[Unit]:
    """Deterministic unit list: same inputs -> same units, names and order on every machine."""
    units: list[Unit] = []
    for path in expand_inputs(inputs):
        kind = _kind(path)
        if kind == "jsonl":
            try:
                with open_regular(path) as f:
                    lines = count_lines(f)
            except InputFileError as exc:
                raise InputError(str(exc)) from None
            step = settings.jsonl_lines_per_unit
            for start in range(0, max(lines, 1), step):
                units.append(Unit(f"shard-{len(units):06d}", kind, path, start, min(start + step, lines)))
        else:
            units.append(Unit(f"shard-{len(units):06d}", kind, path))
    return units


def iter_unit(unit: Unit, settings: SourceSettings) -> Iterator[Item]:
    if unit.kind == "tar":
        from data_tools.tar_source import iter_tar

        return iter_tar(unit.path, settings)
    from data_tools.table_sources import iter_jsonl, iter_parquet

    if unit.kind == "parquet":
        return iter_parquet(unit.path, settings)
    return iter_jsonl(unit.path, unit.start, unit.stop, settings)
