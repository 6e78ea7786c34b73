"""Byte layout of a shard's `.idx` file: megatron-core's MMIDIDX index, then a GenLIP extension.

The full specification, byte by byte, is in docs/shards.md. In short, a shard of N samples is a
uint8 "multimodal" Megatron dataset of 2N sequences: sequence 2i is sample i's JPEG bytes (mode 1),
sequence 2i+1 its caption token ids as little-endian int32 bytes (mode 0), and document i spans
sequences [2i, 2i+2). megatron-core's `IndexedDataset(prefix, multimodal=True)` reads it as is,
because its reader stops after the modes array; our extension (image size, per-sample CRC32, keys,
tokenizer and content hashes) follows it and ends with a SHA-256 of every byte before it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from genlip_megatron.errors import InputError

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
DTYPE_CODE_UINT8 = 1  # megatron.core.datasets.indexed_dataset.DType.uint8
EXT_MAGIC = b"GENLIPX\x00"
EXT_VERSION = 1
MODE_TEXT, MODE_IMAGE = 0, 1
TOKEN_DTYPE = np.dtype("<i4")

_MEGATRON_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, documents
_EXT_HEADER = struct.Struct("<8sQQQ32s32sQ")  # magic, version, samples, bin bytes, bin sha, tok sha, keys
_DIGEST = 32


class ShardError(InputError):
    """A shard that cannot be trusted; the message is one line naming the file."""


@dataclass(frozen=True)
class ShardIndex:
    """Everything an `.idx` holds, as arrays of length N (samples) unless noted."""

    image_offsets: np.ndarray  # int64, byte offset of the image in .bin
    image_lengths: np.ndarray  # int32, bytes
    token_offsets: np.ndarray  # int64, byte offset of the caption tokens (4-aligned)
    token_counts: np.ndarray  # int32, caption tokens (the Megatron length is 4x this, in bytes)
    heights: np.ndarray  # int32
    widths: np.ndarray  # int32
    crc32: np.ndarray  # uint32, zlib.crc32 of image bytes then token bytes
    key_offsets: np.ndarray  # int64 [N + 1] into keys_blob
    keys_blob: bytes  # UTF-8 keys, concatenated
    bin_size: int
    bin_sha256: str  # hex
    tokenizer_sha256: str  # hex

    def __len__(self) -> int:
        return len(self.image_offsets)


def encode_index(index: ShardIndex) -> bytes:
    """Serialise `index`; the inverse of `parse_index`."""
    n = len(index)
    lengths = np.empty(2 * n, dtype="<i4")
    lengths[0::2] = index.image_lengths
    lengths[1::2] = index.token_counts.astype(np.int64) * TOKEN_DTYPE.itemsize
    pointers = np.empty(2 * n, dtype="<i8")
    pointers[0::2] = index.image_offsets
    pointers[1::2] = index.token_offsets
    modes = np.tile(np.array([MODE_IMAGE, MODE_TEXT], dtype=np.int8), n)
    documents = np.arange(0, 2 * n + 1, 2, dtype="<i8")
    parts = [
        _MEGATRON_HEADER.pack(MEGATRON_MAGIC, MEGATRON_VERSION, DTYPE_CODE_UINT8, 2 * n, n + 1),
        lengths.tobytes(),
        pointers.tobytes(),
        documents.tobytes(),
        modes.tobytes(),
        _EXT_HEADER.pack(
            EXT_MAGIC,
            EXT_VERSION,
            n,
            index.bin_size,
            bytes.fromhex(index.bin_sha256),
            bytes.fromhex(index.tokenizer_sha256),
            len(index.keys_blob),
        ),
        np.asarray(index.heights, dtype="<i4").tobytes(),
        np.asarray(index.widths, dtype="<i4").tobytes(),
        np.asarray(index.crc32, dtype="<u4").tobytes(),
        np.asarray(index.key_offsets, dtype="<i8").tobytes(),
        index.keys_blob,
    ]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def parse_index(buf: bytes | memoryview, path: str) -> ShardIndex:
    """Parse and validate an `.idx` image; raise ShardError naming `path` on any inconsistency.

    Arrays are views into `buf` (no copy), so a memory-mapped index costs no reading up front
    beyond the hash check.
    """
    buf = memoryview(buf)
    size = len(buf)
    if size < _MEGATRON_HEADER.size:
        raise ShardError(f"{path}: truncated index ({size} bytes)")
    magic, version, code, seqs, docs = _MEGATRON_HEADER.unpack_from(buf, 0)
    if magic != MEGATRON_MAGIC:
        raise ShardError(f"{path}: not a shard index (bad magic {bytes(magic)!r})")
    if version != MEGATRON_VERSION or code != DTYPE_CODE_UINT8:
        raise ShardError(f"{path}: unsupported index version {version} / dtype code {code}")
    if seqs % 2 or docs != seqs // 2 + 1:
        raise ShardError(f"{path}: {seqs} sequences / {docs} documents is not a GenLIP shard")
    n = seqs // 2
    ext_at = _MEGATRON_HEADER.size + seqs * (4 + 8 + 1) + docs * 8
    if size < ext_at + _EXT_HEADER.size:
        raise ShardError(f"{path}: truncated index ({size} bytes, header says more than {ext_at})")
    emagic, eversion, en, bin_size, bin_sha, tok_sha, keys_size = _EXT_HEADER.unpack_from(buf, ext_at)
    if emagic != EXT_MAGIC or eversion != EXT_VERSION or en != n:
        raise ShardError(f"{path}: bad GenLIP extension (magic {bytes(emagic)!r}, version {eversion})")
    arrays_at = ext_at + _EXT_HEADER.size
    expected = arrays_at + n * (4 + 4 + 4) + (n + 1) * 8 + keys_size + _DIGEST
    if size != expected:
        raise ShardError(f"{path}: index is {size} bytes, expected {expected} (truncated or padded)")
    if hashlib.sha256(buf[: size - _DIGEST]).digest() != bytes(buf[size - _DIGEST :]):
        raise ShardError(f"{path}: index checksum mismatch (file is corrupt)")

    def array(dtype: str, count: int, offset: int) -> np.ndarray:
        return np.frombuffer(buf, dtype=dtype, count=count, offset=offset)

    at = _MEGATRON_HEADER.size
    lengths = array("<i4", seqs, at)
    pointers = array("<i8", seqs, at + seqs * 4)
    at = arrays_at
    heights = array("<i4", n, at)
    widths = array("<i4", n, at + 4 * n)
    crc = array("<u4", n, at + 8 * n)
    key_offsets = array("<i8", n + 1, at + 12 * n)
    keys_at = at + 12 * n + 8 * (n + 1)
    index = ShardIndex(
        image_offsets=pointers[0::2],
        image_lengths=lengths[0::2],
        token_offsets=pointers[1::2],
        token_counts=lengths[1::2] // TOKEN_DTYPE.itemsize,
        heights=heights,
        widths=widths,
        crc32=crc,
        key_offsets=key_offsets,
        keys_blob=bytes(buf[keys_at : keys_at + keys_size]),
        bin_size=bin_size,
        bin_sha256=bin_sha.hex(),
        tokenizer_sha256=tok_sha.hex(),
    )
    _check_extents(index, lengths, path)
    return index


def _check_extents(index: ShardIndex, lengths: np.ndarray, path: str) -> None:
    """Every sequence must lie inside .bin, so a reader can never slice past the end of the file."""
    if len(index) == 0:
        return
    ends = np.concatenate(
        [index.image_offsets + index.image_lengths, index.token_offsets + lengths[1::2]]
    )
    starts = np.concatenate([index.image_offsets, index.token_offsets])
    if starts.min() < 0 or ends.max() > index.bin_size or (lengths[1::2] % 4).any():
        raise ShardError(f"{path}: index points outside the {index.bin_size}-byte data file")
    if index.key_offsets[0] != 0 or index.key_offsets[-1] != len(index.keys_blob):
        raise ShardError(f"{path}: key table is inconsistent")
