"""Every kind of bad input is a counted reject or a one-line error naming the file; no crash, and
nothing already written is damaged."""

import io
import json
import os
import subprocess
import tarfile

import pytest
from PIL import Image

from data_tools.build import BuildError
from data_tools.synthetic import make_caption, make_jpeg, sample_members, write_synthetic_tar, write_tar
from data_tools.unit import BuildSettings
from genlip_megatron.data.image_codec import ImageSettings
from genlip_megatron.data.shards import ShardReader


def read_report(out, unit="shard-000000"):
    with open(os.path.join(out, unit + ".report.json")) as f:
        return json.load(f)


def _keys(out):
    reader = ShardReader(os.path.join(out, "shard-000000"))
    return [reader[i].key for i in range(len(reader))]


def _good(key):
    return sample_members(key, make_jpeg(16, 16, 1), make_caption(1))


def _bomb_png():
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, "PNG")  # ~100 KB on disk, 144 Mpixel decoded
    return buf.getvalue()


def test_bad_samples_are_counted_by_reason_and_good_ones_kept(tmp_path, build):
    jpeg = make_jpeg(16, 16, 1)
    members = _good("ok1")
    members += [("corrupt.jpg", jpeg[:200] + b"\x00" * 50 + jpeg[250:]), ("corrupt.txt", b"x")]
    members += [("truncated.jpg", jpeg[: len(jpeg) // 2]), ("truncated.txt", b"x")]
    members += [("zero.jpg", b""), ("zero.txt", b"x")]
    members += [("notimage.png", b"hello world"), ("notimage.txt", b"x")]
    members += [("bomb.png", _bomb_png()), ("bomb.txt", b"x")]
    members += [("nocaption.jpg", jpeg)]
    members += [("noimage.txt", b"caption without image")]
    members += [("blank.jpg", jpeg), ("blank.txt", b" \t\n ")]
    members += [("latin1.jpg", jpeg), ("latin1.txt", b"caf\xe9 au lait")]
    members += _good("ok2") + _good("ok1")  # ok1 again: a duplicate key
    members += [("../escape.jpg", jpeg), ("/abs/path.jpg", jpeg)]
    write_tar(str(tmp_path / "bad.tar"), members)
    out, result = build([tmp_path / "bad.tar"], BuildSettings(image=ImageSettings(max_pixels=50_000_000)))
    assert _keys(out) == ["ok1", "latin1", "ok2"]
    report = read_report(out)
    assert report["rejects"] == {
        "decode_error": 2, "duplicate_key": 1, "empty_caption": 1, "empty_image": 1, "missing_caption": 1,
        "missing_image": 1, "too_many_pixels": 1, "unsafe_path": 2, "unsupported_format": 1,
    }
    assert report["repairs"] == {"invalid_utf8": 1}
    reader = ShardReader(os.path.join(out, "shard-000000"))
    assert reader[1].tokens.size > 0  # "caf au lait": invalid byte dropped, rest kept
    assert not os.path.exists(tmp_path / "escape.jpg") and not os.path.exists("/abs/path.jpg")
    decode_errors = {e[0] for e in report["examples"] if e[1] == "decode_error"}
    assert decode_errors == {"corrupt", "truncated"}


def test_truncated_tar_keeps_whole_samples_and_names_the_file(tmp_path, build, capsys):
    write_synthetic_tar(str(tmp_path / "t.tar"), 20)
    data = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2 + 100])
    write_synthetic_tar(str(tmp_path / "u.tar"), 5, first=100)
    out, result = build([tmp_path / "t.tar", tmp_path / "u.tar"])
    report = read_report(out)
    kept = report["num_samples"]
    assert 5 <= kept < 20 and report["rejects"].get("truncated_input", 0) <= 1
    assert len(report["errors"]) == 1 and "t.tar" in report["errors"][0] and "\n" not in report["errors"][0]
    assert _keys(out) == [f"{i:09d}" for i in range(kept)]
    assert read_report(out, "shard-000001")["num_samples"] == 5  # the next unit is unaffected
    assert "t.tar" in capsys.readouterr().err


def test_gzip_and_corrupt_member_inside_compressed_tar(tmp_path, build):
    with tarfile.open(tmp_path / "g.tar.gz", "w:gz") as tar:
        for name, data in _good("a") + _good("b"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out, result = build([tmp_path / "g.tar.gz"])
    assert _keys(out) == ["a", "b"]


def test_non_utf8_caption_is_repaired_or_rejected_when_nothing_remains(tmp_path, build, tokenizer):
    jpeg = make_jpeg(16, 16, 1)
    write_tar(str(tmp_path / "u.tar"), [("a.jpg", jpeg), ("a.txt", b"\xff\xfe good \x80words"),
                                        ("b.jpg", jpeg), ("b.txt", b"\xff\xfe\x80")])
    out, _ = build([tmp_path / "u.tar"])
    reader = ShardReader(os.path.join(out, "shard-000000"))
    assert len(reader) == 1 and tokenizer.decode(reader[0].tokens.tolist()) == "good words"
    assert read_report(out)["rejects"] == {"empty_caption": 1}


def test_output_path_that_is_a_file_is_a_one_line_error(tmp_path, build):
    write_synthetic_tar(str(tmp_path / "a.tar"), 3)
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(BuildError) as err:
            build([tmp_path / "a.tar"], out=str(out))
        assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_read_only_output_directory_fails_cleanly_and_keeps_existing_shards(tmp_path, build):
    write_synthetic_tar(str(tmp_path / "a.tar"), 3)
    out, _ = build([tmp_path / "a.tar"])
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    write_synthetic_tar(str(tmp_path / "b.tar"), 3, first=3)
    if subprocess.run(["chattr", "+i", out], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        with pytest.raises(BuildError, match="cannot write to the output directory"):
            build([tmp_path / "a.tar", tmp_path / "b.tar"], out=out)
    finally:
        subprocess.run(["chattr", "-i", out], check=True)
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before


def test_output_folder_of_another_build_is_refused(tmp_path, build):
    write_synthetic_tar(str(tmp_path / "a.tar"), 3)
    out, _ = build([tmp_path / "a.tar"])
    with pytest.raises(BuildError, match="plan.json: this folder holds a build with other"):
        build([tmp_path / "a.tar"], BuildSettings(image=ImageSettings(max_side=8)), out=out)


def test_cli_reports_missing_input_in_one_line(tmp_path, tokenizer_path, capsys):
    from genlip_megatron.cli import main

    code = main(["shards", "build", str(tmp_path / "nope.tar"), "--out", str(tmp_path / "o"),
                 "--tokenizer", tokenizer_path, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "nope.tar" in err
