"""Where each image's pixels come from and what size they become, decided before any decoding.

Both the packer (which needs every sample's token count from its stored height and width) and the
decoders (DALI and the reference) take crop windows and output sizes from here, so they can never
disagree. Random-resized-crop parameters are a pure function of (seed, global position, dataset
index): reruns, resumes and DP-size changes crop identically, and no RNG state is checkpointed.

Stage 1: a square `image_size` output. Stage 2 (`native_resolution`): Qwen2-VL's smart_resize with
factor = patch size (GenLIP: 16, 64^2 .. 512^2 pixels), the one definition of that rule here; the
DALI graph and the reference decoder both resize to the sizes it gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genlip_megatron.data.sampler import derive_key

__all__ = ["ImageGeometry", "MAX_ASPECT_RATIO", "smart_resize"]

MAX_ASPECT_RATIO = 200  # Qwen2-VL's limit: longer-side / shorter-side above this is refused


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Stage-2 output size (h, w) of a height x width image: Qwen2-VL's `smart_resize`, the rule the
    official GenLIP stage 2 uses (factor = patch 16, min 64^2, max 512^2 pixels).

    Each side is first rounded to a multiple of `factor` (Python's round: halves go to even). If that
    area is above max_pixels, both sides scale by beta = sqrt(h * w / max_pixels) and round DOWN to
    a multiple of `factor`, but not below `factor`; else if it is below min_pixels, both scale by
    beta = sqrt(min_pixels / (h * w)) and round UP. The aspect ratio is kept as far as the
    rounding allows. Raises ValueError (one line) above an aspect ratio of MAX_ASPECT_RATIO.
    Official examples: 480x640 -> 432x576, 1000x700 -> 608x416.
    """
    if min(height, width) < 1:
        raise ValueError(f"a {height}x{width} image has no pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {ratio:.1f} of a {height}x{width} image is above {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(h_bar), int(w_bar)


@dataclass(frozen=True)
class ImageGeometry:
    """Crop window and output size of every image; see the module docstring."""

    patch_size: int = 16
    image_size: int = 224
    native_resolution: bool = False
    min_pixels: int = 64 * 64
    max_pixels: int = 512 * 512
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int = 0

    def __post_init__(self):
        if not self.native_resolution and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    def crop_window(self, height: int, width: int, position: int, index: int) -> tuple[float, float, float, float]:
        """Relative window (y0, x0, y1, x1) in [0, 1] of the source image that is resized to the output.

        Without random_resized_crop it is the whole image. Otherwise an area fraction in crop_scale and
        an aspect ratio log-uniform in crop_ratio, up to 10 draws, else the whole image.
        """
        if not self.random_resized_crop:
            return 0.0, 0.0, 1.0, 1.0
        rng = np.random.default_rng(derive_key(self.seed, position, index, 0xC0))
        for _ in range(10):
            frac = rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
            ch = math.sqrt(frac * height * width / ratio)
            cw = math.sqrt(frac * height * width * ratio)
            if ch <= height and cw <= width:
                y0 = rng.uniform(0, height - ch)
                x0 = rng.uniform(0, width - cw)
                return y0 / height, x0 / width, (y0 + ch) / height, (x0 + cw) / width
        return 0.0, 0.0, 1.0, 1.0

    def output_size(self, height: int, width: int, window: tuple[float, float, float, float]) -> tuple[int, int]:
        """(h, w) in pixels of the processed image whose source is `window` of a height x width image."""
        if not self.native_resolution:
            return self.image_size, self.image_size
        crop_h = max(1, round((window[2] - window[0]) * height))
        crop_w = max(1, round((window[3] - window[1]) * width))
        return smart_resize(crop_h, crop_w, self.patch_size, self.min_pixels, self.max_pixels)

    def grid(self, height: int, width: int, position: int, index: int) -> tuple[int, int]:
        """Patch grid (rows, cols) of a stored height x width image at this global position."""
        th, tw = self.output_size(height, width, self.crop_window(height, width, position, index))
        return th // self.patch_size, tw // self.patch_size

    def min_image_tokens(self) -> int:
        if not self.native_resolution:
            return (self.image_size // self.patch_size) ** 2
        return max(1, self.min_pixels // (self.patch_size * self.patch_size))

    def max_image_tokens(self) -> int:
        if not self.native_resolution:
            return (self.image_size // self.patch_size) ** 2
        return self.max_pixels // (self.patch_size * self.patch_size)
