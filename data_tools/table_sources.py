"""Row-shaped inputs: parquet files (Hugging Face datasets layout) and a JSONL of captions beside a
folder of images."""

from __future__ import annotations

import os
from typing import Iterator

from data_tools.captions import parse_json
from data_tools.sources import Item, RawSample, Reject, SampleProblem, SourceSettings
from genlip_megatron.data.input_files import InputFileError, iter_lines, open_regular, read_bounded

_PARQUET_BATCH_ROWS = 256
MAX_JSONL_LINE_BYTES = 4 << 20  # a longer line is rejected (bad_jsonl_line), skipped unread
MAX_PARQUET_ROW_GROUP_BYTES = 2 << 30  # pyarrow decodes a row group's columns whole


def _image_bytes(value) -> bytes | None:
    """HF `Image` feature columns are structs {bytes, path}; plain binary columns are bytes."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


def _key_of(value) -> str | None:
    """A sample id from a record: strings and integers only (a nested value is not an id)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value)


def iter_parquet(path: str, settings: SourceSettings) -> Iterator[Item]:
    import pyarrow.parquet as pq

    stem = os.path.splitext(os.path.basename(path))[0]
    seen: set[str] = set()
    row = 0
    try:
        with open_regular(path) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            if settings.image_field not in names:
                yield Reject(path, "input_error", f"{path}: no image column {settings.image_field!r} in {names}")
                return
            for group in range(parquet.num_row_groups):
                meta = parquet.metadata.row_group(group)
                if meta.total_byte_size > MAX_PARQUET_ROW_GROUP_BYTES:  # decoded whole by pyarrow
                    yield Reject(path, "input_error", f"{path}: row group {group} holds {meta.total_byte_size} "
                                 f"bytes decoded (> {MAX_PARQUET_ROW_GROUP_BYTES}); its {meta.num_rows} rows skipped")
                    row += meta.num_rows
                    continue
                yield from _parquet_rows(parquet, group, stem, row, seen, settings)
                row += meta.num_rows
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ValueError, TypeError, KeyError, ...
        yield Reject(path, "input_error", f"{path}: unreadable at or after row {row} ({type(exc).__name__}: {exc})")


def _parquet_rows(parquet, group: int, stem: str, row: int, seen: set, settings: SourceSettings) -> Iterator[Item]:
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group]):
        for record in batch.to_pylist():
            key = _key_of(record.get(settings.key_field)) or f"{stem}/{row:09d}"
            row += 1
            if key in seen:
                yield Reject(key, "duplicate_key")
                continue
            seen.add(key)
            image = _image_bytes(record.pop(settings.image_field))
            if image is None:
                yield Reject(key, "missing_image")
            elif len(image) > settings.max_member_bytes:
                yield Reject(key, "member_too_large", f"{len(image)} bytes")
            else:
                yield RawSample(key, bytes(image), record)


def _image_path(root: str, relative) -> str:
    """The image file a JSONL record names, or SampleProblem: absolute, `..`, NUL, unencodable."""
    if not isinstance(relative, str):
        raise SampleProblem("missing_image", "no image path")
    if "\0" in relative or os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        raise SampleProblem("unsafe_path", repr(relative[:200]))
    try:
        os.fsencode(relative)
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        raise SampleProblem("unsafe_path", f"{relative[:200]!r} is not a valid file name") from None
    return os.path.join(root, relative)


def _jsonl_record(line: bytes | None, where: str, settings: SourceSettings, root: str) -> tuple[str, dict, str]:
    """(key, caption fields, image path) of one JSONL line; SampleProblem when it cannot be used."""
    if line is None:
        raise SampleProblem("bad_jsonl_line", f"line longer than {MAX_JSONL_LINE_BYTES} bytes")
    try:
        record = parse_json(line)
    except ValueError as exc:
        raise SampleProblem("bad_jsonl_line", str(exc)) from None
    if not isinstance(record, dict):
        raise SampleProblem("bad_jsonl_line", "not a JSON object")
    relative = record.pop(settings.image_field, None)
    key = _key_of(record.get(settings.key_field)) or (relative if isinstance(relative, str) and relative else where)
    return key, record, _image_path(root, relative) if isinstance(relative, str) else relative


def iter_jsonl(path: str, start: int, stop: int, settings: SourceSettings) -> Iterator[Item]:
    root = settings.image_root or os.path.dirname(path)
    seen: set[str] = set()
    with open_regular(path) as f:  # unreadable: the unit fails (a re-run retries), no sample lost
        for lineno, line in enumerate(iter_lines(f, MAX_JSONL_LINE_BYTES)):
            if lineno < start:
                continue
            if 0 <= stop <= lineno:
                break
            where = f"{os.path.basename(path)}:{lineno + 1}"
            try:
                key, record, image_path = _jsonl_record(line, where, settings, root)
            except SampleProblem as exc:
                yield Reject(where, exc.reason, exc.detail)
                continue
            except Exception as exc:  # noqa: BLE001 - one line never ends the file
                yield Reject(where, "unexpected_error", f"{type(exc).__name__}: {exc}")
                continue
            if key in seen:
                yield Reject(key, "duplicate_key", where)
                continue
            seen.add(key)
            if not isinstance(image_path, str):
                yield Reject(key, "missing_image", f"{where}: no {settings.image_field!r} path")
                continue
            try:
                image = read_bounded(image_path, settings.max_member_bytes)
            except InputFileError as exc:
                reason = {"too_large": "member_too_large", "not_regular_file": "not_regular_file"}.get(exc.reason)
                yield Reject(key, reason or "missing_image", f"{where}: {exc}")
                continue
            yield RawSample(key, image, record)
