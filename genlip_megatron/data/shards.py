"""One shard: `<prefix>.bin` (JPEG bytes and caption token ids) + `<prefix>.idx` (see shard_format).

`ShardWriter` streams samples to temporary files and publishes them with fsync + rename, so a
reader (or a resumed build) sees either a complete shard or none. `ShardReader` memory-maps both
files, validates version, sizes and the index checksum on open, and serves any sample in O(1)
as zero-copy numpy views. The full content hash is checked by `verify_shard` (and
`ShardReader(..., verify=True)`): it reads every byte, so it is not paid on every open.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import zlib
from array import array
from typing import NamedTuple, Sequence

import numpy as np

from genlip_megatron.data.input_files import InputFileError, open_regular
from genlip_megatron.data.shard_format import (
    TOKEN_DTYPE,
    ShardError,
    ShardIndex,
    encode_index,
    parse_index,
)

__all__ = ["Sample", "ShardError", "ShardReader", "ShardWriter", "verify_shard", "shard_paths"]

_HASH_CHUNK = 8 << 20


class Sample(NamedTuple):
    image: np.ndarray  # uint8 [bytes], encoded RGB JPEG (a view into the mapped .bin)
    tokens: np.ndarray  # int32 [T], caption ids without prompt and without end tokens
    height: int
    width: int
    key: str


def shard_paths(prefix: str) -> tuple[str, str]:
    return prefix + ".bin", prefix + ".idx"


def fsync_dir(path: str) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Append samples, then `close()` to publish atomically; `abort()` (or an exception inside a
    `with` block) removes the temporary files and leaves any previous shard untouched."""

    def __init__(self, prefix: str, tokenizer_sha256: str):
        self.prefix = prefix
        self._tokenizer_sha256 = tokenizer_sha256
        self._bin_path, self._idx_path = shard_paths(prefix)
        # Fixed temporary names: a killed run's leftovers are simply overwritten by the next one.
        self._tmp_bin, self._tmp_idx = self._bin_path + ".tmp", self._idx_path + ".tmp"
        self._file = open(self._tmp_bin, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self._pos = 0
        self._image_offsets, self._token_offsets = array("q"), array("q")
        self._image_lengths, self._token_counts = array("i"), array("i")
        self._heights, self._widths, self._crc = array("i"), array("i"), array("I")
        self._key_offsets, self._keys = array("q", [0]), bytearray()

    def __len__(self) -> int:
        return len(self._image_offsets)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def add(self, key: str, image: bytes, tokens: Sequence[int] | np.ndarray, height: int, width: int):
        token_bytes = np.asarray(tokens, dtype=TOKEN_DTYPE).tobytes()
        self._image_offsets.append(self._pos)
        self._image_lengths.append(len(image))
        self._write(image)
        # Pad so every token run starts 4-byte aligned: int32 views stay aligned for any reader.
        if self._pos % 4:
            self._write(b"\0" * (4 - self._pos % 4))
        self._token_offsets.append(self._pos)
        self._token_counts.append(len(token_bytes) // TOKEN_DTYPE.itemsize)
        self._write(token_bytes)
        self._heights.append(height)
        self._widths.append(width)
        self._crc.append(zlib.crc32(token_bytes, zlib.crc32(image)))
        # backslashreplace: a tar name that was not UTF-8 arrives with surrogates; store it readably.
        self._keys += key.encode("utf-8", errors="backslashreplace")
        self._key_offsets.append(len(self._keys))

    def close(self) -> ShardIndex:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        index = ShardIndex(
            image_offsets=np.frombuffer(self._image_offsets, dtype=np.int64),
            image_lengths=np.frombuffer(self._image_lengths, dtype=np.int32),
            token_offsets=np.frombuffer(self._token_offsets, dtype=np.int64),
            token_counts=np.frombuffer(self._token_counts, dtype=np.int32),
            heights=np.frombuffer(self._heights, dtype=np.int32),
            widths=np.frombuffer(self._widths, dtype=np.int32),
            crc32=np.frombuffer(self._crc, dtype=np.uint32),
            key_offsets=np.frombuffer(self._key_offsets, dtype=np.int64),
            keys_blob=bytes(self._keys),
            bin_size=self._pos,
            bin_sha256=self._sha.hexdigest(),
            tokenizer_sha256=self._tokenizer_sha256,
        )
        with open(self._tmp_idx, "wb") as f:
            f.write(encode_index(index))
            f.flush()
            os.fsync(f.fileno())
        # .bin first, .idx last: an .idx that names the new .bin's size and hash marks completion;
        # a kill between the two renames leaves a mismatch that open() and verify reject.
        os.replace(self._tmp_bin, self._bin_path)
        os.replace(self._tmp_idx, self._idx_path)
        fsync_dir(os.path.dirname(self._bin_path))
        return index

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.unlink(path)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _map(path: str) -> memoryview:
    try:
        with open_regular(path) as f:  # a FIFO or device in place of a shard must not hang or stream
            if os.fstat(f.fileno()).st_size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except InputFileError as exc:
        raise ShardError(str(exc)) from None
    except OSError as exc:
        raise ShardError(f"{path}: cannot open ({exc.strerror or exc})") from None


class ShardReader:
    """Random access to one shard. `reader[i]` -> Sample of zero-copy views into the mapped .bin."""

    def __init__(self, prefix: str, verify: bool = False):
        self.prefix = prefix
        self.bin_path, self.idx_path = shard_paths(prefix)
        self.index = parse_index(_map(self.idx_path), self.idx_path)
        self._bin = np.frombuffer(_map(self.bin_path), dtype=np.uint8)
        if len(self._bin) != self.index.bin_size:
            raise ShardError(
                f"{self.bin_path}: data file is {len(self._bin)} bytes, index says "
                f"{self.index.bin_size} (truncated or from another build)"
            )
        if verify:
            verify_shard(prefix)
        # One contiguous int64 row per sample: a single numpy index + tolist() per read is the
        # cheapest lookup that stays at 64 bytes per sample (Python lists would cost ~3x more).
        idx = self.index
        self._rows = np.stack(
            [
                idx.image_offsets,
                idx.image_offsets + idx.image_lengths,
                idx.token_offsets,
                idx.token_offsets + idx.token_counts.astype(np.int64) * 4,
                idx.heights,
                idx.widths,
                idx.key_offsets[:-1],
                idx.key_offsets[1:],
            ],
            axis=1,
        ).astype(np.int64)
        self._keys = idx.keys_blob

    def __reduce__(self):
        # Mapped memory does not pickle: a worker process (DALI, DataLoader, spawn) reopens the files.
        return (ShardReader, (self.prefix,))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def tokenizer_sha256(self) -> str:
        return self.index.tokenizer_sha256

    def key(self, i: int) -> str:
        k0, k1 = self._rows[i, 6:8].tolist()
        return self.index.keys_blob[k0:k1].decode("utf-8")

    def __getitem__(self, i: int) -> Sample:
        i0, i1, t0, t1, h, w, k0, k1 = self._rows[i].tolist()
        data = self._bin
        return Sample(data[i0:i1], data[t0:t1].view(TOKEN_DTYPE), h, w, self._keys[k0:k1].decode())


def check_token_ids(index: ShardIndex, data: np.ndarray, vocab_size: int, bin_path: str) -> None:
    """Every caption token id must lie in [0, vocab_size): an id past the model's vocabulary crashes
    training; one past the tokenizer's but inside the padded vocabulary trains silently on noise."""
    for i in range(len(index)):
        start, count = int(index.token_offsets[i]), int(index.token_counts[i])
        if count:
            ids = data[start : start + 4 * count].view(TOKEN_DTYPE)
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab_size:
                key = index.keys_blob[int(index.key_offsets[i]) : int(index.key_offsets[i + 1])]
                raise ShardError(f"{bin_path}: sample {i} (key {key.decode('utf-8', 'replace')[:100]!r}) holds "
                                 f"token id {low if low < 0 else high}, outside the vocabulary of {vocab_size}")


def verify_shard(prefix: str, vocab_size: int | None = None) -> int:
    """Re-hash the whole .bin and every sample's CRC32, and (given `vocab_size`) range-check every
    token id; return the sample count or raise ShardError naming the file (and the first bad sample)."""
    bin_path, idx_path = shard_paths(prefix)
    index = parse_index(_map(idx_path), idx_path)
    data = np.frombuffer(_map(bin_path), dtype=np.uint8)
    if len(data) != index.bin_size:
        raise ShardError(f"{bin_path}: data file is {len(data)} bytes, index says {index.bin_size}")
    sha = hashlib.sha256()
    for start in range(0, len(data), _HASH_CHUNK):
        sha.update(data[start : start + _HASH_CHUNK])
    if sha.hexdigest() == index.bin_sha256:
        if vocab_size is not None:
            check_token_ids(index, data, vocab_size, bin_path)
        return len(index)
    # The per-sample CRC32s exist to name the damaged sample, not only the file.
    for i in range(len(index)):
        io, il = int(index.image_offsets[i]), int(index.image_lengths[i])
        to, tc = int(index.token_offsets[i]), int(index.token_counts[i])
        if zlib.crc32(data[to : to + 4 * tc], zlib.crc32(data[io : io + il])) != int(index.crc32[i]):
            raise ShardError(f"{bin_path}: content sha256 mismatch; sample {i} fails its CRC32")
    raise ShardError(f"{bin_path}: content sha256 mismatch (corrupt padding between samples)")
