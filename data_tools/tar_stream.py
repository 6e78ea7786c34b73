"""A minimal streaming tar reader: (name, type, bytes) per member, nothing written to disk.

NOTE: Python's `tarfile` spends ~50 us of Python per member building TarInfo objects; for
img2dataset tars of small images that was two thirds of preprocessing time. This reader parses
only what we use (name, size, type; GNU long names and pax `path`), verifies each header checksum,
and raises `TarStreamError` with the member count on truncation or a damaged header.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO, Iterator

BLOCK = 512
REGULAR_TYPES = (b"0", b"\0", b"7")
DIRECTORY_TYPE = b"5"
GNU_LONGNAME, PAX_HEADER, PAX_GLOBAL = b"L", b"x", b"g"


class TarStreamError(Exception):
    pass


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TarStreamError(f"unexpected end of data in {what} ({len(data)} of {size} bytes)")
    return data


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    path = None
    while data:
        length, _, rest = data.partition(b" ")
        record = rest[: int(length) - len(length) - 1]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", errors="surrogateescape")
        data = data[int(length) :]
    return path


def _skip(stream: BinaryIO, size: int) -> None:
    while size:
        size -= len(_read_exact(stream, min(size, 1 << 20), "member data"))


def iter_tar_members(stream: BinaryIO, max_size: int) -> Iterator[tuple[str, bytes, bytes | None, int]]:
    """Yield (name, type flag, data, size) per member; data is None (skipped unread) above max_size."""
    count = 0
    next_name = None
    while True:
        header = stream.read(BLOCK)
        if not header or header == b"\0" * BLOCK:
            return  # end of archive (or a stream cut exactly at a member boundary)
        if len(header) < BLOCK:
            raise TarStreamError(f"unexpected end of data in header after {count} members")
        try:
            stored = _number(header[148:156])
            size = _number(header[124:136])
        except ValueError:
            raise TarStreamError(f"damaged header after {count} members") from None
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarStreamError(f"header checksum mismatch after {count} members")
        kind = header[156:157]
        data = None
        if size > max_size and kind not in (GNU_LONGNAME, PAX_HEADER, PAX_GLOBAL):
            _skip(stream, size)
        else:
            data = _read_exact(stream, size, "member data")
        if size % BLOCK:
            _read_exact(stream, BLOCK - size % BLOCK, "member padding")
        if kind == GNU_LONGNAME:
            next_name = data.rstrip(b"\0").decode("utf-8", errors="surrogateescape")
            continue
        if kind == PAX_HEADER:
            next_name = _pax_path(data) or next_name
            continue
        if kind == PAX_GLOBAL:
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        count += 1
        yield (next_name or name.decode("utf-8", errors="surrogateescape")), kind, data, size
        next_name = None


def open_tar_stream(path: str) -> BinaryIO:
    if path.endswith((".gz", ".tgz")):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


STREAM_ERRORS = (TarStreamError, EOFError, OSError, zlib.error)  # gzip raises the last three
