"""Row-shaped inputs: parquet files (Hugging Face datasets layout) and a JSONL of captions beside a
folder of images."""

from __future__ import annotations

import json
import os
from typing import Iterator

from data_tools.sources import Item, RawSample, Reject, SourceSettings

_PARQUET_BATCH_ROWS = 256


def _image_bytes(value) -> bytes | None:
    """HF `Image` feature columns are structs {bytes, path}; plain binary columns are bytes."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


def iter_parquet(path: str, settings: SourceSettings) -> Iterator[Item]:
    import pyarrow.parquet as pq

    stem = os.path.splitext(os.path.basename(path))[0]
    seen: set[str] = set()
    row = 0
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        if settings.image_field not in names:
            yield Reject(path, "input_error", f"{path}: no image column {settings.image_field!r} in {names}")
            return
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                key = str(record.get(settings.key_field) or f"{stem}/{row:09d}")
                row += 1
                if key in seen:
                    yield Reject(key, "duplicate_key")
                    continue
                seen.add(key)
                image = _image_bytes(record.pop(settings.image_field))
                if image is None:
                    yield Reject(key, "missing_image")
                    continue
                yield RawSample(key, bytes(image), record)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        yield Reject(path, "input_error", f"{path}: unreadable after {row} rows ({exc})")


def _safe_join(root: str, relative: str) -> str | None:
    if os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        return None
    return os.path.join(root, relative)


def iter_jsonl(path: str, start: int, stop: int, settings: SourceSettings) -> Iterator[Item]:
    root = settings.image_root or os.path.dirname(path)
    seen: set[str] = set()
    with open(path, "rb") as f:
        for lineno, line in enumerate(f):
            if lineno < start:
                continue
            if 0 <= stop <= lineno:
                break
            where = f"{os.path.basename(path)}:{lineno + 1}"
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                yield Reject(where, "bad_jsonl_line", str(exc))
                continue
            if not isinstance(record, dict):
                yield Reject(where, "bad_jsonl_line", "not a JSON object")
                continue
            relative = record.pop(settings.image_field, None)
            key = str(record.get(settings.key_field) or relative or where)
            if key in seen:
                yield Reject(key, "duplicate_key", where)
                continue
            seen.add(key)
            if not isinstance(relative, str):
                yield Reject(key, "missing_image", f"{where}: no {settings.image_field!r} path")
                continue
            image_path = _safe_join(root, relative)
            if image_path is None:
                yield Reject(key, "unsafe_path", relative)
                continue
            try:
                if os.path.getsize(image_path) > settings.max_member_bytes:
                    yield Reject(key, "member_too_large", relative)
                    continue
                with open(image_path, "rb") as image_file:
                    image = image_file.read()
            except OSError:
                yield Reject(key, "missing_image", f"{where}: cannot read {relative}")
                continue
            yield RawSample(key, image, record)
