"""`genlip shards build` on data whose captions sit under another field: it fails loudly, naming the
rejection reasons and the fields it looked for, instead of writing an empty dataset."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from data_tools.synthetic import make_caption, make_jpeg
from genlip_megatron.cli import main
from genlip_megatron.data.tokenizer import train_bpe


def _parquet(path, rows: int = 5) -> None:
    images = [{"bytes": make_jpeg(16, 16, i), "path": None} for i in range(rows)]
    table = pa.table({"image": images, "caption": [make_caption(i) for i in range(rows)],
                      "text": [make_caption(i + 50) for i in range(rows)]})
    pq.write_table(table, str(path))


def test_a_build_that_rejects_every_sample_exits_nonzero_and_says_which_field_to_pass(tmp_path, capsys):
    _parquet(tmp_path / "train.parquet")
    train_bpe([make_caption(i) for i in range(100)], 300, str(tmp_path / "tok.json"), min_frequency=1)
    args = ["shards", "build", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "out"),
            "--tokenizer", str(tmp_path / "tok.json"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "kept no sample" in err[0] and "missing_caption x5" in err[0]
    assert "['txt']" in err[0] and "--caption-field" in err[0]
    assert "['caption', 'text']" in err[0]  # the sample's own text fields: what to pass instead
    assert not os.path.exists(tmp_path / "out" / "manifest.json")

    args[4] = str(tmp_path / "out2")
    assert main(args + ["--caption-field", "caption"]) == 0  # the field it named works
    assert os.path.exists(tmp_path / "out2" / "manifest.json")
