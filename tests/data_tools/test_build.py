"""`genlip shards build` on good inputs: bytes kept or converted, captions picked, all input kinds."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_tools.captions import CaptionSettings
from data_tools.merge import merge
from data_tools.synthetic import (
    make_caption,
    make_jpeg,
    sample_members,
    smooth_image,
    write_synthetic_tar,
    write_tar,
)
from data_tools.unit import BuildSettings
from genlip_megatron.data.image_codec import ImageSettings
from genlip_megatron.data.manifest import open_dataset
from genlip_megatron.data.shards import ShardReader


def read_report(out, unit="shard-000000"):
    with open(os.path.join(out, unit + ".report.json")) as f:
        return json.load(f)


def _pil(image_bytes):
    image = Image.open(io.BytesIO(image_bytes))
    image.load()
    return image


def _encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_accepted_jpeg_samples_read_back_bit_identical(tmp_path, build, tokenizer):
    write_synthetic_tar(str(tmp_path / "a.tar"), 40, size=(24, 40))
    out, result = build([tmp_path / "a.tar"])
    assert result["totals"]["samples"] == 40 and result["totals"]["reencoded"] == 0
    reader = ShardReader(os.path.join(out, "shard-000000"))
    for i in range(40):
        s = reader[i]
        assert s.image.tobytes() == make_jpeg(24, 40, i % 64)  # original bytes, untouched
        assert s.tokens.tolist() == tokenizer.encode(make_caption(i))
        assert (s.height, s.width) == (24, 40) == _pil(s.image.tobytes()).size[::-1]


def _conversion_cases():
    rgb = smooth_image(20, 30, 3)
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # top half fully transparent -> white
    grey16 = (smooth_image(20, 30, 4)[..., 0].astype(np.uint16) * 257)
    return {
        "cmyk.jpg": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "grey.jpg": _encode(Image.fromarray(rgb[..., 0]), "JPEG", quality=95),
        "rgba.png": _encode(Image.fromarray(rgba), "PNG"),
        "palette.png": _encode(Image.fromarray(rgb).quantize(16), "PNG"),
        "grey16.png": _encode(Image.fromarray(grey16), "PNG"),
        "rgb.webp": _encode(Image.fromarray(rgb), "WEBP", lossless=True),
    }


def test_non_rgb_jpeg_and_other_formats_become_rgb_jpeg(tmp_path, build):
    cases = _conversion_cases()
    members = []
    for name, data in cases.items():
        key, ext = name.split(".")
        members += sample_members(key, data, f"caption of {key}", image_ext=ext)
    write_tar(str(tmp_path / "c.tar"), members)
    out, result = build([tmp_path / "c.tar"])
    assert result["totals"]["samples"] == len(cases) == result["totals"]["reencoded"]
    reader = ShardReader(os.path.join(out, "shard-000000"))
    stored = {reader[i].key: _pil(reader[i].image.tobytes()) for i in range(len(reader))}
    for key, image in stored.items():
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (30, 20), key
    reference = np.asarray(_pil(cases["rgb.webp"]).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(stored["rgb"], dtype=float) - reference).mean() < 4
    rgba = np.asarray(stored["rgba"], dtype=float)
    assert rgba[:8].min() > 240  # transparent -> white
    assert np.abs(rgba[12:] - reference[12:]).mean() < 6
    grey = np.asarray(stored["grey16"], dtype=float)
    assert np.abs(grey[..., 0] - smooth_image(20, 30, 4)[..., 0]).mean() < 3  # high byte kept


def test_max_side_resize_and_min_side_filter(tmp_path, build):
    members = sample_members("big", make_jpeg(100, 200, 1), "a big one")
    members += sample_members("tiny", make_jpeg(6, 50, 2), "a tiny one")
    write_tar(str(tmp_path / "r.tar"), members)
    settings = BuildSettings(image=ImageSettings(max_side=64, min_side=8))
    out, result = build([tmp_path / "r.tar"], settings)
    reader = ShardReader(os.path.join(out, "shard-000000"))
    assert len(reader) == 1 and (reader[0].height, reader[0].width) == (32, 64)
    assert _pil(reader[0].image.tobytes()).size == (64, 32)
    assert read_report(out)["rejects"] == {"too_small": 1}


def test_reencode_always_rewrites_every_image(tmp_path, build):
    write_synthetic_tar(str(tmp_path / "a.tar"), 5)
    settings = BuildSettings(image=ImageSettings(reencode="always", jpeg_quality=50))
    out, result = build([tmp_path / "a.tar"], settings)
    assert result["totals"]["reencoded"] == 5
    assert ShardReader(os.path.join(out, "shard-000000"))[0].image.tobytes() != make_jpeg(32, 32, 0)


def test_caption_field_by_name_and_deterministic_mix(tmp_path, build, tokenizer):
    write_synthetic_tar(str(tmp_path / "a.tar"), 200)
    only_org = BuildSettings(caption=CaptionSettings(fields=("org_caption",)))
    out, _ = build([tmp_path / "a.tar"], only_org)
    reader = ShardReader(os.path.join(out, "shard-000000"))
    assert tokenizer.decode(reader[3].tokens.tolist()) == make_caption(3)
    mix = BuildSettings(caption=CaptionSettings(fields=("re_caption", "org_caption"), mix=(0.75, 0.25)))
    picks = []
    for _ in range(2):
        out, _ = build([tmp_path / "a.tar"], mix)
        reader = ShardReader(os.path.join(out, "shard-000000"))
        picks.append([tokenizer.decode(reader[i].tokens.tolist()).startswith("recap") for i in range(200)])
    assert picks[0] == picks[1]  # same keys, same seed -> same choice
    assert 0.65 < np.mean(picks[0]) < 0.85


def test_parquet_in_hugging_face_image_layout(tmp_path, build):
    images = [{"bytes": make_jpeg(16, 16, i), "path": None} for i in range(6)]
    table = pa.table({"image": images, "caption": [make_caption(i) for i in range(6)]})
    pq.write_table(table, str(tmp_path / "train-00000.parquet"), row_group_size=4)
    settings = BuildSettings(caption=CaptionSettings(fields=("caption",)))
    out, result = build([tmp_path / "train-00000.parquet"], settings)
    assert result["totals"]["samples"] == 6
    reader = ShardReader(os.path.join(out, "shard-000000"))
    assert reader[5].image.tobytes() == images[5]["bytes"] and reader[5].key == "train-00000/000000005"


def test_folder_of_images_with_jsonl_split_into_units(tmp_path, build):
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "captions.jsonl", "w") as f:
        for i in range(7):
            (tmp_path / "imgs" / f"{i}.jpg").write_bytes(make_jpeg(16, 16, i))
            f.write(json.dumps({"image": f"imgs/{i}.jpg", "caption": make_caption(i)}) + "\n")
    settings = BuildSettings(caption=CaptionSettings(fields=("caption",)))
    from dataclasses import replace

    settings = replace(settings, source=replace(settings.source, jsonl_lines_per_unit=3))
    out, result = build([tmp_path / "captions.jsonl"], settings)
    manifest = merge(out)
    assert [s.num_samples for s in manifest.shards] == [3, 3, 1]
    ds = open_dataset(out)
    assert [ds[i].key for i in range(7)] == [f"imgs/{i}.jpg" for i in range(7)]
    assert ds[6].image.tobytes() == make_jpeg(16, 16, 6)


def test_slurm_style_slices_merge_to_the_single_task_result(tmp_path, build):
    for t in range(3):
        write_synthetic_tar(str(tmp_path / f"{t}.tar"), 10, first=10 * t)
    whole, _ = build([tmp_path])
    split = str(tmp_path / "split")
    for task in range(2):
        build([tmp_path], out=split, task_index=task, num_tasks=2)
    merge(whole), merge(split)
    for name in sorted(os.listdir(whole)):
        with open(os.path.join(whole, name), "rb") as a, open(os.path.join(split, name), "rb") as b:
            assert a.read() == b.read(), name


def test_cli_build_info_verify_show(tmp_path, tokenizer_path, capsys):
    from genlip_megatron.cli import main

    write_synthetic_tar(str(tmp_path / "a.tar"), 12)
    out = str(tmp_path / "ds")
    assert main(["shards", "build", str(tmp_path / "a.tar"), "--out", out, "--tokenizer", tokenizer_path,
                 "--no-progress"]) == 0
    assert main(["shards", "info", out]) == 0
    assert "samples 12 in 1 shards" in capsys.readouterr().out
    assert main(["shards", "verify", out]) == 0
    assert main(["shards", "show", out, "3", "--out", str(tmp_path / "show")]) == 0
    assert (tmp_path / "show" / "sample-3.jpg").read_bytes() == make_jpeg(32, 32, 3)
    assert make_caption(3) in (tmp_path / "show" / "sample-3.txt").read_text()


def test_tokenizer_train_command_defines_end_of_text(tmp_path):
    from genlip_megatron.cli import main
    from genlip_megatron.data.tokenizer import Tokenizer

    (tmp_path / "caps.txt").write_text("\n".join(make_caption(i) for i in range(300)))
    out = str(tmp_path / "tok.json")
    assert main(["tokenizer", "train", str(tmp_path / "caps.txt"), "--out", out, "--vocab-size", "300"]) == 0
    tok = Tokenizer.from_file(out)
    assert tok.end_ids == [tok.token_to_id("<|endoftext|>")] and tok.pad_id == tok.token_to_id("<|pad|>")
    assert tok.decode(tok.encode("a red cat")) == "a red cat"
    assert tok.identity == {"name": "tok", "sha256": tok.sha256} and len(tok.sha256) == 64
