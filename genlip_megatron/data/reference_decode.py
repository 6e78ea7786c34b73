"""The non-DALI image path: the reference the DALI pipeline is tested (and benchmarked) against.

decode (simplejpeg = libjpeg-turbo; Pillow when simplejpeg is missing or refuses the file) -> crop the
window from image_geometry -> resize with an antialiased triangle (bilinear) filter -> normalise with
mean = std = 0.5 -> float32 [3, h, w] in [-1, 1].

NOTE: Pillow's BILINEAR resize scales the filter support with the downscale factor, the same filter
DALI's `interp_type=INTERP_LINEAR, antialias=True` applies; both take the crop as a continuous box,
so the two paths agree to a few grey levels (tolerance stated in tests/data/test_dali_pipeline.py).
Training never runs this path.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a declared dependency
    simplejpeg = None

__all__ = ["decode_rgb", "reference_process"]


def decode_rgb(encoded: np.ndarray | bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] RGB. Raises on undecodable data."""
    data = bytes(encoded) if not isinstance(encoded, bytes) else encoded
    if simplejpeg is not None and simplejpeg.is_jpeg(data):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # e.g. CMYK or arithmetic-coded JPEGs: let Pillow try
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def reference_process(
    encoded: np.ndarray | bytes, window: tuple[float, float, float, float], out_size: tuple[int, int]
) -> np.ndarray:
    """One image through the reference path.

    Args:
        encoded: uint8 [bytes] encoded image.
        window: relative crop (y0, x0, y1, x1), see ImageGeometry.crop_window.
        out_size: (h, w) output pixels, see ImageGeometry.output_size.
    Returns:
        float32 [3, h, w], normalised to [-1, 1].
    """
    rgb = decode_rgb(encoded)
    height, width = rgb.shape[:2]
    y0, x0, y1, x1 = window
    box = (x0 * width, y0 * height, x1 * width, y1 * height)
    resized = Image.fromarray(rgb).resize((out_size[1], out_size[0]), Image.BILINEAR, box=box)
    chw = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
    return (chw - 127.5) / 127.5
