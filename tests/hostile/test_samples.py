"""Hostile samples: each one is a counted reject with its reason (or is repaired), never the end of its
unit, on every re-run; nothing blocks, reads without bound, or writes outside the output folder.

Cases are generated here, each between good samples, so the test also shows that the samples around
a bad one are kept intact and in order.
"""

import io
import json
import os
from collections import Counter

import numpy as np
import pytest
from data_harness import assert_one_line_errors, build, report, snapshot
from PIL import Image

from data_tools.synthetic import make_caption, make_jpeg, sample_members, write_tar
from genlip_megatron.data.shards import ShardReader

pytestmark = pytest.mark.timeout(600)

GOOD = make_jpeg(24, 24, 1)


def _keys(out, unit="shard-000000"):
    reader = ShardReader(os.path.join(out, unit))
    return [reader[i].key for i in range(len(reader))]


def _png(width, height, fmt="PNG"):
    buf = io.BytesIO()
    Image.new("L", (width, height), 200).save(buf, fmt)
    return buf.getvalue()


# --- JSONL: image paths and lines ------------------------------------------------------------------

def _jsonl_cases(root):
    """(line, expected reject reason or None for kept) pairs; creates the files the lines name."""
    os.makedirs(root / "img")
    (root / "img" / "ok.jpg").write_bytes(GOOD)
    (root / "img" / "big.jpg").write_bytes(GOOD + b"\0" * 70_000)  # above the 64 KiB limit set below
    os.mkfifo(root / "img" / "fifo.jpg")  # a FIFO blocks open() and read() forever
    os.symlink("/dev/zero", root / "img" / "zero.jpg")  # never ends
    os.symlink("/dev/null", root / "img" / "null.jpg")
    os.mkdir(root / "img" / "dir.jpg")
    os.symlink("ok.jpg", root / "img" / "link-to-ok.jpg")  # a link to a regular file is fine

    def line(image, caption="a red cat", **extra):
        return json.dumps({"image": image, "caption": caption, **extra})

    deep = "[" * 100_000 + "]" * 100_000
    return [
        (line("img/ok.jpg", key="good-1"), None),
        (line("img/a\u0000b.jpg"), "unsafe_path"),  # NUL in the path
        (line("img/\ud800.jpg"), "unsafe_path"),  # a lone surrogate (JSON escape), not encodable
        (line("img/\udcff.jpg"), "missing_image"),  # surrogateescape byte: a legal name, no such file
        (line("img/fifo.jpg"), "not_regular_file"),
        (line("img/zero.jpg"), "not_regular_file"),
        (line("img/null.jpg"), "not_regular_file"),
        (line("img/dir.jpg"), "not_regular_file"),
        (line("img/big.jpg"), "member_too_large"),
        (line("img/missing.jpg"), "missing_image"),
        (line("../outside.jpg"), "unsafe_path"),
        (line("/etc/passwd"), "unsafe_path"),
        ('{"image": "img/ok.jpg", "caption": ' + deep + "}", "bad_jsonl_line"),  # RecursionError
        (deep, "bad_jsonl_line"),
        ('{"image": "img/ok.jpg", "caption": "' + "x" * (5 << 20) + '"}', "bad_jsonl_line"),  # 5 MiB line
        (b"\xff\xfe not utf-8", "bad_jsonl_line"),
        ("[1, 2]", "bad_jsonl_line"),
        (line(5), "missing_image"),
        (line("img/ok.jpg", caption=7, key="numeric-caption"), "missing_caption"),
        (line("img/ok.jpg", caption="cat \ud800 dog", key={"nested": [[[]]]}), None),  # key: the path
        (line("img/ok.jpg", key="good-1"), "duplicate_key"),
        (line("img/link-to-ok.jpg", caption="\ud83d ok caption"), None),  # surrogate removed from caption
        (line("img/ok.jpg", key="good-2"), None),
    ]


def test_jsonl_paths_and_lines_are_counted_rejects_and_the_unit_completes(tmp_path):
    cases = _jsonl_cases(tmp_path)
    with open(tmp_path / "captions.jsonl", "wb") as f:
        for text, _ in cases:
            f.write((text if isinstance(text, bytes) else text.encode()) + b"\n")
    out = tmp_path / "out"
    flags = ("--caption-field", "caption", "--max-image-bytes", str(64 << 10))
    before = snapshot(tmp_path)
    proc = build([tmp_path / "captions.jsonl"], out, *flags, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert_one_line_errors(proc)
    got = report(out)
    assert got["rejects"] == Counter(reason for _, reason in cases if reason)
    assert got["num_samples"] == sum(1 for _, r in cases if r is None) == len(_keys(out))
    assert _keys(out) == ["good-1", "img/ok.jpg", "img/link-to-ok.jpg", "good-2"]
    # nothing outside the output folder changed, and a re-run (a fresh build of the same inputs
    # into a second folder, and the same command again) completes with identical files
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")}
    assert after == before
    first = snapshot(out)
    again = build([tmp_path / "captions.jsonl"], out, *flags, cwd=str(tmp_path))
    assert again.returncode == 0 and "0 units (1 already done)" in again.stdout
    fresh = build([tmp_path / "captions.jsonl"], tmp_path / "out2", *flags, cwd=str(tmp_path))
    assert fresh.returncode == 0
    assert snapshot(out) == first
    assert {k: v for k, v in snapshot(tmp_path / "out2").items() if k != "plan.json"} == {
        k: v for k, v in first.items() if k != "plan.json"}


# --- Images and caption members in a tar ------------------------------------------------------------

def _image_cases():
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(rotated, "JPEG", exif=exif.tobytes())
    damaged_exif = io.BytesIO()
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(damaged_exif, "JPEG", exif=b"Exif\0\0MM\0*garbage")
    return [
        ("wide-png", _png(70_000, 1), "side_too_long"),  # the JPEG re-encode would raise
        ("wide-gif", _png(65_501, 2, "GIF"), "side_too_long"),
        ("widest-ok", _png(65_500, 1), None),  # the largest side a JPEG can have
        ("rotated", rotated.getvalue(), None),
        ("damaged-exif", damaged_exif.getvalue(), None),
    ]


def _json_member_cases():
    deep = ("[" * 50_000 + "]" * 50_000).encode()
    return [
        ("deep-json", deep, "bad_json"),  # RecursionError inside json.loads
        ("deep-json-field", b'{"re_caption": "ok", "meta": ' + deep + b"}", "bad_json"),
        ("list-json", b"[1, 2, 3]", "bad_json"),
        ("bad-utf8-json", b'{"re_caption": "\xff\xfe"}', "bad_json"),
        ("huge-number-json", b'{"re_caption": "ok", "n": ' + b"9" * 10_000 + b"}", "bad_json"),
        ("big-json", b'{"re_caption": "' + b"x" * (2 << 20) + b'"}', "member_too_large"),  # > 1 MiB
        ("big-txt", b"y" * (2 << 20), "member_too_large"),
        ("ok-json", json.dumps({"re_caption": "recap " + make_caption(3)}).encode(), None),
    ]


def test_images_and_caption_members_are_counted_rejects(tmp_path):
    members = sample_members("first", GOOD, make_caption(1))
    for key, image, _ in _image_cases():
        ext = "png" if image[:4] == b"\x89PNG" else "gif" if image[:3] == b"GIF" else "jpg"
        members += sample_members(key, image, make_caption(2), image_ext=ext)
    for key, data, _ in _json_member_cases():
        members += [(f"{key}.jpg", GOOD), (f"{key}.{'txt' if key == 'big-txt' else 'json'}", data)]
    members += sample_members("last", GOOD, make_caption(4))
    cases = _image_cases() + _json_member_cases()
    expected = Counter(reason for _, _, reason in cases if reason)
    kept = ["first", *(key for key, _, reason in cases if reason is None), "last"]
    write_tar(str(tmp_path / "in.tar"), members)
    out = tmp_path / "out"
    proc = build([tmp_path / "in.tar"], out, "--caption-field", "txt", "--caption-field", "re_caption")
    assert proc.returncode == 0, proc.stderr
    assert_one_line_errors(proc)
    assert report(out)["rejects"] == expected
    assert _keys(out) == kept
    reader = ShardReader(os.path.join(out, "shard-000000"))
    stored = {reader[i].key: reader[i] for i in range(len(reader))}
    assert (stored["rotated"].height, stored["rotated"].width) == (30, 10)  # EXIF 6: turned upright
    assert (stored["widest-ok"].height, stored["widest-ok"].width) == (1, 65_500)
    examples = {key: (reason, detail) for key, reason, detail in report(out)["examples"]}
    assert "65500" in examples["wide-png"][1] and "nested too deeply" in examples["deep-json"][1]


def test_one_sample_raising_anything_is_a_counted_reject(tmp_path, monkeypatch):
    """The reject path has no hole: an exception type no reader or codec expects (here from the image
    codec, for one sample) is counted as `unexpected_error` and the unit goes on."""
    from data_harness import tokenizer_file

    from data_tools import unit
    from data_tools.build import run_build
    from data_tools.unit import BuildSettings

    real = unit.prepare_image

    def flaky(data, settings):
        if data == b"boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real(data, settings)

    monkeypatch.setattr(unit, "prepare_image", flaky)
    members = sample_members("a", GOOD, "x") + [("b.jpg", b"boom"), ("b.txt", b"x")] + sample_members("c", GOOD, "y")
    write_tar(str(tmp_path / "in.tar"), members)
    result = run_build([str(tmp_path / "in.tar")], str(tmp_path / "out"), tokenizer_file(), BuildSettings(),
                       "p", progress=False)
    assert result["failed"] == [] and result["totals"]["samples"] == 2
    assert result["totals"]["rejects"] == {"unexpected_error": 1}
    assert report(tmp_path / "out")["examples"][0][:2] == ["b", "unexpected_error"]


def test_a_reader_failing_mid_file_keeps_the_samples_before_and_names_the_file(tmp_path, monkeypatch):
    from data_harness import tokenizer_file

    from data_tools import unit
    from data_tools.build import run_build
    from data_tools.unit import BuildSettings

    real = unit.iter_unit

    def breaks_after_two(u, settings):
        for n, item in enumerate(real(u, settings)):
            if n == 2:
                raise MemoryError("reader bug")
            yield item

    monkeypatch.setattr(unit, "iter_unit", breaks_after_two)
    write_tar(str(tmp_path / "in.tar"), [m for i in range(5) for m in sample_members(f"k{i}", GOOD, "cap")])
    result = run_build([str(tmp_path / "in.tar")], str(tmp_path / "out"), tokenizer_file(), BuildSettings(),
                       "p", progress=False)
    assert result["failed"] == [] and result["totals"]["samples"] == 2
    (error,) = report(tmp_path / "out")["errors"]
    assert "in.tar" in error and "MemoryError" in error and "\n" not in error


# --- parquet --------------------------------------------------------------------------------------

def test_parquet_rows_are_counted_rejects_and_oversized_row_groups_are_skipped(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from data_harness import tokenizer_file

    from data_tools import table_sources
    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.unit import BuildSettings

    rows = [  # (key, image, caption, expected reason)
        ("ok-1", GOOD, "a red cat", None),
        ("long", GOOD, "w " * (1 << 20), "caption_too_long"),  # 2 Mi characters before cleaning
        ("big", GOOD + b"\0" * 70_000, "too big", "member_too_large"),
        (None, None, "no image", "missing_image"),
        ("ok-1", GOOD, "duplicate", "duplicate_key"),
        ("ok-2", GOOD, "a blue dog", None),
    ]
    table = pa.table({"key": [r[0] for r in rows], "image": [r[1] for r in rows], "caption": [r[2] for r in rows]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=3)  # row groups of rows 0-2 and 3-5
    settings = BuildSettings(source=table_sources.SourceSettings(max_member_bytes=64 << 10),
                             caption=CaptionSettings(fields=("caption",)))
    out = tmp_path / "out"
    run_build([str(tmp_path / "a.parquet")], str(out), tokenizer_file(), settings, "p", progress=False)
    assert report(out)["rejects"] == Counter(r[3] for r in rows if r[3])
    assert _keys(out) == ["ok-1", "ok-2"]

    # a row group whose decoded size is above the limit is skipped whole, named, the rest kept
    first_group = pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(0).total_byte_size
    monkeypatch.setattr(table_sources, "MAX_PARQUET_ROW_GROUP_BYTES", first_group - 1)
    out2 = tmp_path / "out2"
    run_build([str(tmp_path / "a.parquet")], str(out2), tokenizer_file(), settings, "p", progress=False)
    (error,) = report(out2)["errors"]
    assert "a.parquet: row group 0" in error and "3 rows skipped" in error
    assert _keys(out2) == ["ok-1", "ok-2"]  # from rows 3-5, where ok-1 is no longer a duplicate
