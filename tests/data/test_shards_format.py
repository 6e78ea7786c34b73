"""Shard files: round trip, byte layout against a hand parser, megatron-core compatibility, damage."""

import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_tools.synthetic import make_jpeg
from genlip_megatron.data.shards import ShardError, ShardReader, ShardWriter, verify_shard

TOK_SHA = "ab" * 32


def _samples(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        tokens = rng.integers(0, 151_936, size=int(rng.integers(0, 30))).astype(np.int32)
        out.append((f"key/{i}-é", make_jpeg(h, w, i), tokens, h, w))
    return out


@pytest.fixture
def shard(tmp_path):
    samples = _samples(50)
    prefix = str(tmp_path / "shard-000000")
    with ShardWriter(prefix, TOK_SHA) as writer:
        for s in samples:
            writer.add(*s)
        writer.close()
    return prefix, samples


def test_every_sample_reads_back_bit_identical(shard):
    prefix, samples = shard
    reader = ShardReader(prefix)
    assert len(reader) == len(samples)
    for i in np.random.default_rng(1).permutation(len(samples)):
        key, image, tokens, h, w = samples[i]
        got = reader[int(i)]
        assert got.image.dtype == np.uint8 and got.image.tobytes() == image
        assert got.tokens.dtype == np.int32 and np.array_equal(got.tokens, tokens)
        assert (got.height, got.width, got.key) == (h, w, key)
        assert Image.open(io.BytesIO(got.image.tobytes())).size == (w, h)


def test_index_layout_matches_hand_parser(shard):
    prefix, samples = shard
    idx = open(prefix + ".idx", "rb").read()
    data = open(prefix + ".bin", "rb").read()
    magic, version, code, seqs, docs = struct.unpack_from("<9sQBQQ", idx, 0)
    n = len(samples)
    assert (magic, version, code, seqs, docs) == (b"MMIDIDX\x00\x00", 1, 1, 2 * n, n + 1)
    lengths = struct.unpack_from(f"<{2 * n}i", idx, 34)
    pointers = struct.unpack_from(f"<{2 * n}q", idx, 34 + 8 * n)
    for i, (_, image, tokens, _, _) in enumerate(samples):
        assert data[pointers[2 * i] : pointers[2 * i] + lengths[2 * i]] == image
        assert pointers[2 * i + 1] % 4 == 0 and lengths[2 * i + 1] == 4 * len(tokens)
        start = pointers[2 * i + 1]
        assert data[start : start + lengths[2 * i + 1]] == tokens.astype("<i4").tobytes()
    assert hashlib.sha256(idx[:-32]).digest() == idx[-32:]
    reader = ShardReader(prefix)
    assert reader.index.bin_sha256 == hashlib.sha256(data).hexdigest()
    crc = [zlib.crc32(t.astype("<i4").tobytes(), zlib.crc32(img)) for _, img, t, _, _ in samples]
    assert reader.index.crc32.tolist() == crc
    assert reader.tokenizer_sha256 == TOK_SHA


def test_megatron_core_indexed_dataset_reads_images_and_tokens(shard):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix, samples = shard
    ds = IndexedDataset(prefix, multimodal=True)
    assert len(ds) == 2 * len(samples)
    assert ds.index.document_indices.tolist() == list(range(0, 2 * len(samples) + 1, 2))
    for i, (_, image, tokens, _, _) in enumerate(samples):
        img, mode = ds[2 * i]
        assert mode == 1 and img.tobytes() == image
        text, mode = ds[2 * i + 1]
        assert mode == 0 and np.array_equal(text.view("<i4"), tokens)


def test_empty_shard_round_trips(tmp_path):
    prefix = str(tmp_path / "empty")
    ShardWriter(prefix, TOK_SHA).close()
    assert len(ShardReader(prefix)) == 0 and verify_shard(prefix) == 0


@pytest.mark.parametrize("suffix", [".bin", ".idx"])
def test_truncated_file_is_a_one_line_error_naming_it(shard, suffix):
    prefix, _ = shard
    path = prefix + suffix
    os.truncate(path, os.path.getsize(path) - 5)
    with pytest.raises(ShardError) as err:
        ShardReader(prefix)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_flipped_byte_in_bin_is_named_by_verify(shard):
    prefix, samples = shard
    reader = ShardReader(prefix)
    offset = int(reader.index.image_offsets[7]) + 3
    del reader
    with open(prefix + ".bin", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    ShardReader(prefix)  # sizes still agree: open is cheap and does not hash the data
    with pytest.raises(ShardError, match="sample 7 fails its CRC32"):
        verify_shard(prefix)


def test_flipped_byte_in_idx_fails_on_open(shard):
    prefix, _ = shard
    with open(prefix + ".idx", "r+b") as f:
        f.seek(40)
        f.write(b"\x7f")
    with pytest.raises(ShardError, match="checksum"):
        ShardReader(prefix)


def test_aborted_writer_leaves_previous_shard_untouched(shard):
    prefix, samples = shard
    before = open(prefix + ".bin", "rb").read(), open(prefix + ".idx", "rb").read()
    with pytest.raises(RuntimeError):
        with ShardWriter(prefix, TOK_SHA) as writer:
            writer.add(*samples[0])
            raise RuntimeError("killed")
    assert (open(prefix + ".bin", "rb").read(), open(prefix + ".idx", "rb").read()) == before
    assert not [p for p in os.listdir(os.path.dirname(prefix)) if p.endswith(".tmp")]
    assert verify_shard(prefix) == len(samples)
