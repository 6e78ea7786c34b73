"""The shard build's caption limit is a setting (`--max-caption-tokens`), off by default: the
official recipe keeps every caption and cuts whole samples at training time (data.max_sample_tokens)."""

import json
import os

from data_tools.captions import CaptionSettings
from data_tools.synthetic import make_caption, make_jpeg, sample_members, write_tar
from data_tools.unit import BuildSettings
from genlip_megatron.cli import main
from genlip_megatron.data.shards import ShardReader

LONG = " ".join([make_caption(1)] * 8)  # ~100 tokens


def _tar(path):
    members = sample_members("0/short", make_jpeg(16, 16, 1), make_caption(2))
    members += sample_members("0/long", make_jpeg(16, 16, 3), LONG)
    write_tar(str(path), members)


def test_by_default_every_caption_is_kept_whole(tmp_path, build, tokenizer):
    _tar(tmp_path / "a.tar")
    out, result = build([tmp_path / "a.tar"])
    assert result["totals"]["samples"] == 2 and result["totals"]["rejects"] == {}
    reader = ShardReader(os.path.join(out, "shard-000000"))
    assert reader[1].tokens.tolist() == tokenizer.encode(LONG) and len(reader[1].tokens) > 64


def test_a_set_limit_rejects_longer_captions_counted_and_recorded(tmp_path, build, tokenizer):
    _tar(tmp_path / "a.tar")
    limit = len(tokenizer.encode(LONG)) - 1
    out, result = build([tmp_path / "a.tar"], BuildSettings(caption=CaptionSettings(max_tokens=limit)))
    assert result["totals"]["samples"] == 1 and result["totals"]["rejects"] == {"caption_too_many_tokens": 1}
    with open(os.path.join(out, "plan.json")) as f:
        assert json.load(f)["settings"]["caption"]["max_tokens"] == limit


def test_the_command_line_flag_defaults_to_no_limit_and_refuses_nonsense(tmp_path, tokenizer_path, capsys):
    _tar(tmp_path / "a.tar")
    out = tmp_path / "out"
    assert main(["shards", "build", str(tmp_path / "a.tar"), "--out", str(out), "--tokenizer", tokenizer_path,
                 "--no-progress"]) == 0
    with open(out / "plan.json") as f:
        assert json.load(f)["settings"]["caption"]["max_tokens"] is None
    assert main(["shards", "build", str(tmp_path / "a.tar"), "--out", str(tmp_path / "bad"), "--tokenizer",
                 tokenizer_path, "--max-caption-tokens", "0", "--no-progress"]) != 0
    assert "--max-caption-tokens must be a positive integer, got 0" in capsys.readouterr().err
