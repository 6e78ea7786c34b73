"""The DALI image graph against the reference decoder, native-resolution sizes, and the device switch.

Tolerance (pixel levels of 0..255, i.e. x 1/127.5 after normalisation): mean |DALI - reference| < 0.5
and max < 12. Both decode with libjpeg-turbo and filter with an antialiased triangle; the residual is
rounding inside the resampler (DALI resizes in two separable passes at its own intermediate precision).
"""

import numpy as np
import pytest
from qwen2vl_rule import expected_size
from toy_dataset import photo_samples

from genlip_megatron.data.dali_pipeline import ImageItem, build_image_pipeline, run_image_pipeline
from genlip_megatron.data.image_geometry import ImageGeometry, smart_resize
from genlip_megatron.data.reference_decode import reference_process

MEAN_LEVELS, MAX_LEVELS = 0.5, 12.0


def _through_dali(items, pad_to_batch):
    pipe = build_image_pipeline(lambda k: items, max_batch_size=len(items), pad_to_batch=pad_to_batch,
                                num_workers=1, num_threads=2)
    return run_image_pipeline(pipe)


def _assert_close(dali, reference):
    assert dali.shape == reference.shape
    diff = np.abs(dali - reference) * 127.5
    assert diff.mean() < MEAN_LEVELS and diff.max() < MAX_LEVELS, (diff.mean(), diff.max())


def test_dali_cpu_matches_reference_at_224_with_random_resized_crops():
    samples = photo_samples([(427, 640), (300, 200), (224, 224), (150, 700), (97, 133)])
    geometry = ImageGeometry(patch_size=16, image_size=224, random_resized_crop=True, crop_scale=(0.3, 1.0), seed=3)
    items = []
    for pos, s in enumerate(samples):
        window = geometry.crop_window(s.height, s.width, pos, pos)
        items.append(ImageItem(s.image, window, geometry.output_size(s.height, s.width, window)))
    assert any(it.window != (0.0, 0.0, 1.0, 1.0) for it in items)  # crops really happen
    for item, out in zip(items, _through_dali(items, pad_to_batch=False)):
        assert out.shape == (3, 224, 224) and out.dtype == np.float32
        _assert_close(out, reference_process(item.encoded, item.window, item.size))


EXTREME = [(427, 640), (40, 30), (2000, 60), (60, 2000), (16, 1500), (900, 900), (33, 17), (480, 640),
           (1000, 700), (8, 1600)]


def test_dali_cpu_matches_reference_at_native_sizes_within_bounds():
    """Both decoders resize to smart_resize's sizes, which are the hand-written rule's."""
    samples = photo_samples(EXTREME)
    geometry = ImageGeometry(patch_size=16, native_resolution=True, min_pixels=64 * 64, max_pixels=512 * 512)
    items = [ImageItem(s.image, (0.0, 0.0, 1.0, 1.0), geometry.output_size(s.height, s.width, (0, 0, 1, 1)))
             for s in samples]
    outs = _through_dali(items, pad_to_batch=True)  # variable sizes: padded in the graph, cut back here
    for item, s, out in zip(items, samples, outs):
        h, w = out.shape[1:]
        assert (h, w) == item.size == expected_size(s.height, s.width) and h % 16 == 0 and w % 16 == 0
        assert 64 * 64 <= h * w <= 512 * 512
        if max(s.height / s.width, s.width / s.height) < 8:  # not clamped: aspect ratio kept
            assert abs(np.log((h / w) / (s.height / s.width))) < 0.25
        _assert_close(out, reference_process(item.encoded, item.window, item.size))


def test_smart_resize_gives_patch_multiples_within_the_pixel_bounds_up_to_aspect_ratio_200():
    rng = np.random.default_rng(0)
    shapes = [(1, 200), (200, 1), (1, 1), (5000, 5000), (2, 401)] + [
        tuple(int(v) for v in np.exp(rng.uniform(0, np.log(50_000), 2))) for _ in range(5000)]
    # GenLIP's bounds and Qwen2-VL's defaults (the rule can leave tight bounds such as 16^2..28^2 at
    # extreme aspect ratios: it rounds up to reach min_pixels; the packer then sees the real size).
    for patch, lo, hi in [(16, 64 * 64, 512 * 512), (14, 56 * 56, 28 * 28 * 1280), (4, 8 * 8, 256 * 256)]:
        for h, w in shapes:
            if max(h, w) > 200 * min(h, w):
                with pytest.raises(ValueError, match="aspect ratio"):
                    smart_resize(h, w, patch, lo, hi)
                continue
            th, tw = smart_resize(h, w, patch, lo, hi)
            assert th % patch == 0 and tw % patch == 0 and th >= patch and tw >= patch, (h, w, th, tw)
            assert lo <= th * tw <= hi, (h, w, th, tw, patch)


def _graph(device):
    pipe = build_image_pipeline(lambda k: [], max_batch_size=4, decoder_device=device, build=False)
    pipe._build_graph()  # python-side graph only; the backend (which would need CUDA) is not built
    specs = []
    for op in pipe._ops:
        lines = [line.strip() for line in str(op.spec).splitlines() if "_origin_stack" not in line]
        specs.append([line.replace("_gpu", "_cpu") for line in lines])
    return specs


def test_mixed_graph_differs_from_cpu_graph_only_by_device():
    cpu, mixed = _graph("cpu"), _graph("mixed")
    assert len(cpu) == len(mixed)
    changed = [(a, b) for op_a, op_b in zip(cpu, mixed) for a, b in zip(op_a, op_b) if a != b]
    assert changed and all(a.startswith("device:") and b.startswith("device:") for a, b in changed)
    assert ("device: cpu", "device: mixed") in changed  # the decoder moved to nvJPEG


def test_mixed_decoder_fails_clearly_without_gpu_and_matches_cpu_with_one():
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            build_image_pipeline(lambda k: [], max_batch_size=4, decoder_device="mixed")
        return
    samples = photo_samples([(427, 640), (150, 700)])
    items = [ImageItem(s.image, (0.0, 0.0, 1.0, 1.0), (224, 224)) for s in samples]
    pipe = build_image_pipeline(lambda k: items, max_batch_size=2, decoder_device="mixed", num_workers=1)
    for item, out in zip(items, run_image_pipeline(pipe)):  # nvJPEG: a looser decoder match
        diff = np.abs(out - reference_process(item.encoded, item.window, item.size)) * 127.5
        assert diff.mean() < 2 * MEAN_LEVELS and diff.max() < 4 * MAX_LEVELS


def test_unknown_decoder_device_is_refused():
    with pytest.raises(ValueError, match="decoder_device"):
        build_image_pipeline(lambda k: [], max_batch_size=4, decoder_device="gpu")
