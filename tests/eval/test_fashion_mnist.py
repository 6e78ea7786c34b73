"""data_tools.fashion_mnist writes PNGs holding exactly the idx file's pixels, with matching labels
and captions, deterministically."""

import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools import fashion_mnist as fm

ROOT = fm.DEFAULT_ROOT
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, fm.FILES["test"][0])),
                                reason="Debian package dataset-fashion-mnist is not installed")


@functools.cache
def raw_bytes(split):
    images_file, labels_file = fm.FILES[split]
    with gzip.open(os.path.join(ROOT, images_file), "rb") as f, gzip.open(os.path.join(ROOT, labels_file), "rb") as g:
        return f.read(), g.read()


def raw_image_and_label(split, index):
    """Straight from the IDX bytes: 16-byte image header, 8-byte label header, 28 x 28 uint8 each."""
    images, labels = raw_bytes(split)
    pixels = np.frombuffer(images[16 + index * 784 : 16 + (index + 1) * 784], dtype=np.uint8).reshape(28, 28)
    return pixels, labels[8 + index]


def test_converted_pngs_and_labels_match_the_idx_bytes(tmp_path):
    paths = fm.convert(str(tmp_path), train=12, test=8, seed=5)
    for split, count in (("train", 12), ("test", 8)):
        records = fm.read_jsonl(paths[split])
        assert len(records) == count
        for record in records:
            index = int(record["key"].split("-")[1])
            pixels, label = raw_image_and_label(split, index)
            png = np.asarray(Image.open(os.path.join(tmp_path, split, record["image"])))
            np.testing.assert_array_equal(png, pixels)
            assert record["label"] == label
            assert record["class_name"] == fm.CLASS_NAMES[label]
            assert fm.CLASS_NAMES[label] in record["caption"]
    assert Path(paths["classes"]).read_text().split("\n")[:10] == fm.CLASS_NAMES


def test_test_captions_use_the_first_template_and_zero_shot_lists_every_class(tmp_path):
    paths = fm.convert(str(tmp_path), train=4, test=6)
    for record in fm.read_jsonl(paths["test"]):
        assert record["caption"] == fm.fill_template(fm.TEMPLATES[0], record["class_name"])
    zero_shot = json.loads(Path(paths["zero_shot"]).read_text())
    assert zero_shot["class_names"] == fm.CLASS_NAMES
    assert zero_shot["captions"][9][0] == "a photo of an ankle boot."
    assert all(len(c) == len(fm.TEMPLATES) for c in zero_shot["captions"])


def test_same_arguments_write_the_same_files(tmp_path):
    a = fm.convert(str(tmp_path / "a"), train=30, test=5, seed=1)
    b = fm.convert(str(tmp_path / "b"), train=30, test=5, seed=1)
    c = fm.convert(str(tmp_path / "c"), train=30, test=5, seed=2)
    assert Path(a["train"]).read_text() == Path(b["train"]).read_text()
    assert Path(a["train"]).read_text() != Path(c["train"]).read_text()


def test_read_idx_rejects_a_non_uint8_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big") + bytes(16))  # float32 code
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        fm.read_idx(str(path))
