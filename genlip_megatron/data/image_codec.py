"""Turn arbitrary encoded image bytes into the one form shards hold: a decodable 8-bit RGB JPEG.

Fast path: a YCbCr/RGB JPEG that needs no resize keeps its original bytes (validated by a full
decode), so preprocessing costs about one decode per image. Everything else (CMYK/YCCK or grey
JPEG, PNG, WebP, GIF, palette, 16-bit, alpha) is decoded with Pillow, flattened onto white,
converted to RGB and re-encoded. A failure raises `ImageReject` with a short reason code that the
preprocessing report counts; nothing here ever raises anything else for bad bytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

JPEG_SOI = b"\xff\xd8"
_KEEP_COLORSPACES = ("YCbCr", "RGB")


class ImageReject(Exception):
    """A sample's image cannot be used; `reason` is a stable short code for reports."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageSettings:
    max_side: Optional[int] = None  # resize (keeping aspect) when the longer side exceeds this
    min_side: int = 1  # reject images whose shorter side is below this
    max_pixels: int = 64_000_000  # decompression-bomb guard, checked from the header before decoding
    jpeg_quality: int = 95
    reencode: str = "auto"  # "auto": only when needed | "always": decode and re-encode every image


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    height: int
    width: int
    converted: bool  # True when the bytes were re-encoded (not the input's own bytes)


def _check_size(height: int, width: int, s: ImageSettings) -> None:
    if height * width > s.max_pixels:
        raise ImageReject("too_many_pixels", f"{width}x{height} > {s.max_pixels} pixels")
    if min(height, width) < s.min_side:
        raise ImageReject("too_small", f"{width}x{height}, min side {s.min_side}")


def _needs_resize(height: int, width: int, s: ImageSettings) -> bool:
    return s.max_side is not None and max(height, width) > s.max_side


def prepare_image(data: bytes, settings: ImageSettings) -> PreparedImage:
    if len(data) == 0:
        raise ImageReject("empty_image")
    if data[:2] == JPEG_SOI:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except Exception as exc:  # libjpeg-turbo errors surface as ValueError, but never crash a unit
            raise ImageReject("decode_error", str(exc)) from None
        _check_size(height, width, settings)
        keep = (
            colorspace in _KEEP_COLORSPACES
            and settings.reencode != "always"
            and not _needs_resize(height, width, settings)
        )
        if colorspace in _KEEP_COLORSPACES:
            try:  # strict: "Premature end of JPEG file" and other recoverable warnings are errors
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            except Exception as exc:
                raise ImageReject("decode_error", str(exc)) from None
            if keep:
                return PreparedImage(data, height, width, converted=False)
            return _encode(Image.fromarray(rgb), settings)
    return _encode(_decode_with_pillow(data, settings), settings)


def _decode_with_pillow(data: bytes, settings: ImageSettings) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own pixel limit
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageReject("unsupported_format", "not an image Pillow can identify") from None
        except Image.DecompressionBombError as exc:
            raise ImageReject("too_many_pixels", str(exc)) from None
        except Exception as exc:  # Pillow raises many types on malformed headers
            raise ImageReject("decode_error", f"{type(exc).__name__}: {exc}") from None
        width, height = image.size
        _check_size(height, width, settings)
        try:
            image.load()
            return _to_rgb(image)
        except Exception as exc:
            raise ImageReject("decode_error", f"{type(exc).__name__}: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB; transparent pixels become white (captioned images are
    usually drawn on a light page, and black would invent dark backgrounds)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image).astype(np.int64)
        # 16-bit sources use 0..65535; keep the high byte (Pillow would clip to 255 instead).
        shift = 8 if values.max(initial=0) > 255 else 0
        image = Image.fromarray(np.clip(values >> shift, 0, 255).astype(np.uint8))
        mode = "L"
    if mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" or "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _encode(image: Image.Image, settings: ImageSettings) -> PreparedImage:
    width, height = image.size
    if _needs_resize(height, width, settings):
        scale = settings.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        width, height = image.size
        _check_size(height, width, settings)
    rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    jpeg = simplejpeg.encode_jpeg(rgb, quality=settings.jpeg_quality, colorspace="RGB")
    return PreparedImage(jpeg, height, width, converted=True)
