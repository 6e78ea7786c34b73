"""The streaming tar reader agrees with Python's tarfile (the reference) on every tar flavour."""

import io
import tarfile

import pytest

from data_tools.tar_stream import TarStreamError, iter_tar_members


def _tar(fmt, members, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


MEMBERS = [
    ("a/000001.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("a/000001.txt", b"caption"),
    ("d" * 90 + "/" + "k" * 90 + ".txt", b"ustar prefix or long name"),
    ("x" * 150 + ".json", b"{}"),
    ("ünï/日本.txt", b"pax path"),
    ("empty.txt", b""),
    ("block.bin", b"z" * 512),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(fmt):
    data = _tar(fmt, MEMBERS)
    got = [(name, body) for name, kind, body, _, _ in iter_tar_members(io.BytesIO(data), 1 << 20)]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]
    assert got == expected


def test_oversized_member_is_skipped_unread_and_stream_stays_in_sync():
    data = _tar(tarfile.GNU_FORMAT, [("big.jpg", b"b" * 5000), ("small.txt", b"s")])
    got = [(name, body, size) for name, _, body, size, _ in iter_tar_members(io.BytesIO(data), 1000)]
    assert got[:2] == [("big.jpg", None, 5000), ("small.txt", b"s", 1)]


@pytest.mark.parametrize("cut", [100, 700, 1100])
def test_truncation_and_damage_raise(cut):
    data = _tar(tarfile.GNU_FORMAT, MEMBERS[:2])
    with pytest.raises(TarStreamError, match="unexpected end of data"):
        list(iter_tar_members(io.BytesIO(data[:cut]), 1 << 20))
    damaged = bytearray(data)
    damaged[10] ^= 1
    with pytest.raises(TarStreamError, match="checksum"):
        list(iter_tar_members(io.BytesIO(bytes(damaged)), 1 << 20))
