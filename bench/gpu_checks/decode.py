"""DALI's GPU decoding ("mixed": nvJPEG) against its CPU decoding (libjpeg-turbo) on real JPEG
photos, through the training graph (decode -> crop/resize -> normalise; data/dali_pipeline.py).

The photos: every *.jpg in --jpeg-dir, else the sample photos that ship with scikit-learn and
matplotlib (declared dependencies), each also re-encoded with Pillow as progressive, 4:4:4, 4:2:2,
greyscale and low quality, so the decoders meet the JPEG flavours a web crawl holds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from gpu_checks.context import needs_gpu, skipped, verdict

# Grey levels (0..255): IDCT and chroma upsampling differ slightly between nvJPEG and libjpeg-turbo.
TOLERANCE = {"mean_levels": 1.5, "p99_levels": 8.0}
SIZES = ((224, 224), (320, 496))  # stage 1, and a native-resolution stage-2 size (multiples of 16)


def sample_photos(jpeg_dir: str | None) -> list[Path]:
    if jpeg_dir:
        return sorted(Path(jpeg_dir).glob("*.jp*g"))
    found = []
    try:
        import sklearn.datasets

        found += sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    except ImportError:
        pass
    try:
        import matplotlib

        found += sorted((Path(matplotlib.get_data_path()) / "sample_data").glob("*.jpg"))
    except ImportError:
        pass
    return found


def jpeg_variants(paths: list[Path]) -> dict[str, bytes]:
    """name -> encoded bytes: each photo as stored and re-encoded in other JPEG flavours."""
    from PIL import Image

    out = {}
    for path in paths:
        data = path.read_bytes()
        out[path.name] = data
        image = Image.open(io.BytesIO(data)).convert("RGB")
        for flavour, kwargs in (("progressive", {"progressive": True, "quality": 90}),
                                ("444", {"subsampling": 0, "quality": 95}), ("422", {"subsampling": 1}),
                                ("q40", {"quality": 40}), ("grey", {})):
            buf = io.BytesIO()
            (image.convert("L") if flavour == "grey" else image).save(buf, format="JPEG", **kwargs)
            out[f"{path.stem}-{flavour}.jpg"] = buf.getvalue()
    return out


def decode_all(encoded: dict[str, bytes], device: str) -> dict[tuple[str, tuple], np.ndarray]:
    """Every image at every size through the DALI graph on `device` ("cpu" or "mixed")."""
    from genlip_megatron.data.dali_pipeline import ImageItem, build_image_pipeline, run_image_pipeline

    keys = [(name, size) for name in encoded for size in SIZES]
    items = [ImageItem(np.frombuffer(encoded[name], dtype=np.uint8), (0.0, 0.0, 1.0, 1.0), size)
             for name, size in keys]
    pipe = build_image_pipeline(lambda _: items, max_batch_size=len(items), decoder_device=device,
                                pad_to_batch=True, num_workers=0, num_threads=2)
    return dict(zip(keys, run_image_pipeline(pipe)))


def compare(encoded: dict[str, bytes], first: str, second: str) -> dict:
    """Per-image grey-level differences between two decoder devices (normalised pixels x 127.5)."""
    a, b = decode_all(encoded, first), decode_all(encoded, second)
    per_image, diffs = {}, []
    for key in a:
        diff = np.abs(a[key] - b[key]) * 127.5
        diffs.append(diff.reshape(-1))
        per_image[f"{key[0]}@{key[1][0]}x{key[1][1]}"] = {"mean": float(diff.mean()),
                                                         "p99": float(np.percentile(diff, 99)),
                                                         "max": float(diff.max())}
    every = np.concatenate(diffs)
    return {"images": len(a), "mean_levels": float(every.mean()), "p99_levels": float(np.percentile(every, 99)),
            "max_levels": float(every.max()), "worst_images": dict(sorted(
                per_image.items(), key=lambda kv: -kv[1]["p99"])[:5])}


def check(ctx) -> dict:
    skip = needs_gpu(ctx)
    if skip:
        return skip
    photos = sample_photos(ctx.jpeg_dir)
    if not photos:
        return skipped("no JPEG photos found: pass --jpeg-dir")
    result = compare(jpeg_variants(photos), "cpu", "mixed")
    return verdict(result["mean_levels"] <= TOLERANCE["mean_levels"]
                   and result["p99_levels"] <= TOLERANCE["p99_levels"],
                   photos=[p.name for p in photos], tolerance=TOLERANCE, **result)
