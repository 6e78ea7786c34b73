"""Hostile tar headers: pax records and GNU long names that lie about their length, claim a terabyte,
or never advance. The reader neither spins nor allocates what a header claims; a bad extended header
costs only the member it describes (a counted `bad_tar_header` reject); a damaged stream ends the unit
with the samples before it kept and a one-line error naming the file.

Tars are assembled block by block here (Python's tarfile refuses to write most of these).
"""

import io
import os

import pytest
from data_harness import assert_one_line_errors, build, report, snapshot

from data_tools.synthetic import make_jpeg
from data_tools.tar_stream import MAX_EXTENDED_HEADER, TarStreamError, iter_tar_members, parse_pax
from genlip_megatron.data.shards import ShardReader

pytestmark = pytest.mark.timeout(300)

JPEG = make_jpeg(16, 16, 3)
TIB = 1 << 40


def _size_field(size: int) -> bytes:
    if size < 8**11:
        return b"%011o\0" % size
    return b"\x80" + size.to_bytes(11, "big")  # GNU base-256


def header(name: str, size: int, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    block = bytearray(512)
    block[:100] = name.encode().ljust(100, b"\0")[:100]
    block[100:108] = b"0000644\0"
    block[124:136] = size_field if size_field is not None else _size_field(size)
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def member(name: str, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, len(data), kind) + data + b"\0" * (-len(data) % 512)


def pax(records: bytes, kind: bytes = b"x") -> bytes:
    return member("PaxHeader", records, kind)


def sample(key: str, caption: str = "a red cat") -> bytes:
    return member(f"{key}.jpg", JPEG) + member(f"{key}.txt", caption.encode())


def tar(*parts: bytes) -> bytes:
    return b"".join(parts) + b"\0" * 1024


def record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


# Malformed pax records: each must cost only the member it describes.
BAD_PAX = {
    "non-numeric": b"abc path=x.jpg\n",
    "negative": b"-16 path=x.jpg\n",
    "zero": b"0 path=x.jpg\n",  # once an endless loop
    "too-short": b"3 path=x.jpg\n",
    "overruns": b"999 path=x.jpg\n",
    "no-newline": b"14 path=x.jpgX",
    "no-equals": b"11 pathx.jp\n",
    "no-space": b"12345678901234567890123456",
    "plus-sign": b"+15 path=x.jpg\n",
    "huge-number": b"9" * 19 + b" path=x.jpg\n",
    "size-not-a-number": record("size", "12abc"),
    "size-negative": record("size", "-1"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAX))
def test_malformed_pax_record_costs_only_its_member(case):
    data = tar(sample("a"), pax(BAD_PAX[case]) + member("b.jpg", JPEG), member("b.txt", b"x"), sample("c"))
    members = list(iter_tar_members(io.BytesIO(data), 1 << 20))
    names = [m.name for m in members]
    assert names == ["a.jpg", "a.txt", "b.jpg", "b.txt", "c.jpg", "c.txt"]
    problems = [m.name for m in members if m.problem]
    assert problems == ["b.jpg"] and members[2].data is None
    assert members[4].data == JPEG  # the stream stayed in step


def test_valid_pax_records_and_nul_padding_are_read():
    records = record("path", "long/" + "n" * 200 + ".jpg") + record("size", str(len(JPEG))) + b"\0" * 30
    data = tar(pax(records) + header("short.jpg", 0) + JPEG + b"\0" * (-len(JPEG) % 512))
    (m,) = list(iter_tar_members(io.BytesIO(data), 1 << 20))
    assert m.name == "long/" + "n" * 200 + ".jpg" and m.data == JPEG and m.problem is None
    assert parse_pax(record("path", "é=x") + record("k", "")) == {b"path": "é=x".encode(), b"k": b""}


@pytest.mark.parametrize("kind", [b"x", b"g", b"L", b"K"])
def test_extended_header_above_the_limit_is_skipped_unread(kind):
    big = record("comment", "z" * (MAX_EXTENDED_HEADER + 10))
    data = tar(sample("a"), pax(big, kind) + member("b.jpg", JPEG), sample("c"))
    members = list(iter_tar_members(io.BytesIO(data), 1 << 20))
    assert [m.name for m in members] == ["a.jpg", "a.txt", "b.jpg", "c.jpg", "c.txt"]
    assert members[2].problem and "extended header" in members[2].problem
    assert members[3].data == JPEG


@pytest.mark.parametrize("kind", [b"x", b"g", b"L"])
def test_terabyte_claim_is_never_allocated(kind):
    """A long-name or pax header claiming 1 TiB at the end of a small file: the reader skips in
    bounded chunks, meets the end of the data, and reports truncation (memory stays small)."""
    data = tar(sample("a")) [:-1024] + header("PaxHeader", TIB, kind) + b"q" * 4096
    with pytest.raises(TarStreamError, match="unexpected end of data"):
        list(iter_tar_members(io.BytesIO(data), 1 << 20))


def test_negative_base256_size_is_a_damaged_header():
    negative = b"\xff" * 12
    data = tar(sample("a"), header("b.jpg", 0, size_field=negative) + JPEG)
    with pytest.raises(TarStreamError, match="damaged header"):
        list(iter_tar_members(io.BytesIO(data), 1 << 20))


def test_build_over_hostile_tars_counts_rejects_keeps_samples_and_reruns(tmp_path):
    """Every bad header case through `genlip shards build` (time- and memory-limited): one tar per
    case, one unit each; every unit completes, keeps its good samples, and a re-run changes nothing."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = dict(BAD_PAX)
    for i, (name, records) in enumerate(sorted(cases.items())):
        (inputs / f"{i:02d}-{name}.tar").write_bytes(
            tar(sample("a"), pax(records) + member("b.jpg", JPEG), member("b.txt", b"x"), sample("c")))
    big = record("comment", "z" * (MAX_EXTENDED_HEADER + 10))
    (inputs / "20-big-pax.tar").write_bytes(tar(sample("a"), pax(big) + member("b.jpg", JPEG), sample("c")))
    (inputs / "21-tib-longname.tar").write_bytes(
        tar(sample("a"), sample("b"))[:-1024] + header("././@LongLink", TIB, b"L") + b"q" * 4096)
    out = tmp_path / "out"
    proc = build([inputs], out)
    assert proc.returncode == 0, proc.stderr
    lines = assert_one_line_errors(proc)
    assert [line for line in lines if line.startswith("error")] == []
    (truncated,) = [line for line in lines if "21-tib-longname.tar" in line]
    assert "unexpected end of data" in truncated
    units = sorted(name[:-len(".report.json")] for name in os.listdir(out) if name.endswith(".report.json"))
    assert len(units) == len(cases) + 2
    for unit in units[: len(cases) + 1]:
        r = report(out, unit)
        assert r["rejects"] == {"bad_tar_header": 1, "missing_image": 1} or r["rejects"] == {"bad_tar_header": 1}
        reader = ShardReader(os.path.join(out, unit))
        assert [reader[i].key for i in range(len(reader))] == ["a", "c"]
    last = report(out, units[-1])
    # the sample in flight when the stream broke may lack members: dropped; the one before is kept
    assert last["num_samples"] == 1 and last["rejects"] == {"truncated_input": 1} and len(last["errors"]) == 1
    first = snapshot(out)
    again = build([inputs], out)
    assert again.returncode == 0 and snapshot(out) == first
