"""Stage-2 image sizes: `smart_resize` (data/image_geometry.py) is Qwen2-VL's rule, the one the
official GenLIP stage 2 uses (factor 16, 64^2..512^2 pixels, aspect ratio up to 200): the official
examples, a grid of 400+ sizes against the rule written out by hand (tests/data/qwen2vl_rule.py)
and against transformers' own Qwen2-VL implementation, and the refusal of extreme aspect ratios."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from qwen2vl_rule import expected_size
from toy_dataset import ListDataset, ToySample, encode_jpeg

from genlip_megatron.data.image_geometry import ImageGeometry, smart_resize
from genlip_megatron.data.loader import PackedLoader
from genlip_megatron.data.sample_sequence import TextLayout

BOUNDS = dict(factor=16, min_pixels=64 * 64, max_pixels=512 * 512)


def size_grid() -> list[tuple[int, int]]:
    sides = [1, 2, 7, 8, 9, 15, 16, 17, 23, 24, 25, 40, 56, 63, 64, 65, 100, 199, 200, 224, 333, 480, 512,
             640, 700, 1000, 1024, 1999, 4000, 8192, 20000]  # tiny, ties (24, 40, 56: x.5 patches), huge
    grid = [(h, w) for h in sides for w in sides]
    rng = np.random.default_rng(0)
    for ratio in (1.0, 2.5, 17.0, 99.9, 150.0, 199.0, 200.0):  # extreme aspect ratios up to the limit
        for short in rng.integers(1, 300, size=6):
            grid += [(int(short), int(short * ratio)), (int(short * ratio), int(short))]
    return grid


def test_official_examples():
    assert smart_resize(480, 640, **BOUNDS) == (432, 576)
    assert smart_resize(1000, 700, **BOUNDS) == (608, 416)


def test_a_grid_of_sizes_follows_the_rule_exactly():
    grid = size_grid()
    checked = 0
    for h, w in grid:
        want = expected_size(h, w)
        if want is None:
            with pytest.raises(ValueError, match="aspect ratio"):
                smart_resize(h, w, **BOUNDS)
            continue
        assert smart_resize(h, w, **BOUNDS) == want, (h, w)
        checked += 1
    assert checked >= 400 and len(grid) - checked >= 100  # both branches of the refusal seen


def test_the_rule_is_transformers_qwen2_vl_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen2_vl

    for h, w in size_grid():
        if expected_size(h, w) is not None:
            assert smart_resize(h, w, **BOUNDS) == tuple(qwen2_vl(h, w, **BOUNDS)), (h, w)


def test_rounding_ties_go_to_the_even_multiple():
    # 24 / 16 = 1.5 -> 2 patches, 40 / 16 = 2.5 -> 2 patches; with 4096 px the area is then checked
    assert smart_resize(24 * 8, 40 * 8, **BOUNDS) == (192, 320)  # exact multiples: unchanged
    assert smart_resize(1000, 40, **dict(BOUNDS, min_pixels=16)) == (992, 32)  # 62.5 -> 62, 2.5 -> 2


def test_aspect_ratio_above_200_is_refused_in_one_line():
    with pytest.raises(ValueError) as info:
        smart_resize(2, 500, **BOUNDS)
    assert str(info.value) == "aspect ratio 250.0 of a 2x500 image is above 200"
    assert smart_resize(2, 400, **BOUNDS) == expected_size(2, 400)  # 200 exactly is allowed


def test_the_loader_skips_a_refused_image_and_names_the_sample(caplog):
    rgb = np.full((4, 1000, 3), 128, np.uint8)  # aspect ratio 250
    bad = ToySample(encode_jpeg(rgb), np.arange(7, 12), 4, 1000, "tall/0")
    good = [ToySample(encode_jpeg(np.full((48, 64, 3), 90, np.uint8)), np.arange(7, 12), 48, 64, f"ok/{i}")
            for i in range(5)]
    geometry = ImageGeometry(patch_size=16, native_resolution=True, min_pixels=64 * 64, max_pixels=512 * 512)
    loader = PackedLoader(ListDataset([bad] + good, [6]), geometry, TextLayout((1,), (2,)), 2048, 1, 1, 0, 1,
                          seed=0, decoder="reference", max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        batch = next(iter(loader))
    lines = [r.getMessage() for r in caplog.records if "aspect ratio" in r.getMessage()]
    assert lines and all("shard 0 index 0 " in line for line in lines)  # the one bad sample, by name
    assert "aspect ratio 250.0 of a 4x1000 image is above 200" in lines[0]
    samples = int(batch.segment_ids.max()) + 1  # the plan runs over epochs: good samples only
    h, w = expected_size(48, 64)  # 64 x 80: below 64^2, so scaled up
    assert samples > 5 and int(batch.is_image.sum()) == samples * (h // 16) * (w // 16)


@pytest.mark.parametrize("stage", [1, 2])
def test_a_batch_of_the_tiny_preset_agrees_between_dali_and_the_reference_path(stage):
    """Stage 1 squashes every photo to 28 x 28; stage 2 resizes each by smart_resize (patch 4,
    16^2..48^2 pixels). Same tokens, positions, masks and labels; pixels within the tolerance of
    tests/data/test_dali_pipeline.py (mean < 0.5, max < 12 grey levels)."""
    from toy_dataset import photo_samples

    from genlip_megatron.config.load import load_config

    native = ["data.native_resolution=true", "data.min_pixels=256", "data.max_pixels=2304"] if stage == 2 else []
    cfg = load_config("tiny_cpu", native)
    d, patch = cfg.data, cfg.model.patch_size
    geometry = ImageGeometry(patch_size=patch, image_size=d.image_size, native_resolution=d.native_resolution,
                             min_pixels=d.min_pixels, max_pixels=d.max_pixels)
    samples = photo_samples([(56, 84), (40, 30), (100, 60), (60, 100), (20, 120), (90, 90), (33, 17), (48, 64)])
    batches = {}
    for decoder in ("dali", "reference"):
        loader = PackedLoader(ListDataset(samples, [len(samples)]), geometry, TextLayout((1,), (2,)), d.seq_length,
                              2, 2, 0, 1, seed=0, decoder=decoder, num_workers=1)
        batches[decoder] = next(iter(loader))
    dali, ref = batches["dali"], batches["reference"]
    for key in ("tokens", "is_image", "position_ids", "segment_ids", "labels", "loss_mask"):
        assert torch.equal(getattr(dali, key), getattr(ref, key)), key
    diff = (dali.image_patches - ref.image_patches).abs() * 127.5
    assert diff.mean() < 0.5 and diff.max() < 12, (diff.mean(), diff.max())
    rule = {expected_size(s.height, s.width, patch, d.min_pixels, d.max_pixels) for s in samples}
    for b in range(2):
        for seg in range(int(dali.segment_ids[b].max()) + 1):
            image = dali.is_image[b] & (dali.segment_ids[b] == seg)
            grid = tuple(int(dali.position_ids[axis, b][image].max()) + 1 for axis in (1, 2))
            assert grid == (7, 7) if stage == 1 else (grid[0] * patch, grid[1] * patch) in rule, grid
