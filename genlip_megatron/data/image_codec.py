"""Turn arbitrary encoded image bytes into the one form shards hold: a decodable 8-bit RGB JPEG
whose stored pixels are upright.

Fast path: a YCbCr/RGB JPEG that needs no resize and no rotation keeps its original bytes
(validated by a full decode), so preprocessing costs about one decode per image. Everything else
(CMYK/YCCK or grey JPEG, PNG, WebP, GIF, palette, 16-bit, alpha) is decoded with Pillow, flattened
onto white, converted to RGB and re-encoded. A failure raises `ImageReject` with a short reason
code that the preprocessing report counts.

EXIF orientation is applied here, once: an image tagged as rotated or mirrored is turned upright
and re-encoded without EXIF, so the stored height x width is what every decoder shows. The loader's
decoders (DALI with `adjust_orientation=False`, the reference) then decode the stored pixels as
they are and agree with each other and with the stored size, for these shards and any older ones.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from genlip_megatron.errors import InputError

JPEG_SOI = b"\xff\xd8"
JPEG_MAX_SIDE = 65500  # libjpeg-turbo's JPEG_MAX_DIMENSION: no JPEG can be wider or taller
EXIF_ORIENTATION = 0x0112
_KEEP_COLORSPACES = ("YCbCr", "RGB")
# EXIF orientation -> the transpose that makes the image upright (TIFF/EXIF 2.3, tag 274)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


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

    def __post_init__(self):
        for name, flag, low, high in (("max_side", "--max-side", 1, JPEG_MAX_SIDE),
                                      ("min_side", "--min-side", 1, JPEG_MAX_SIDE),
                                      ("max_pixels", "--max-pixels", 1, None),
                                      ("jpeg_quality", "--jpeg-quality", 1, 100)):
            value = getattr(self, name)
            if value is None and name == "max_side":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bounds = f"between {low} and {high}" if high else f"at least {low}"
                raise InputError(f"{flag} must be an integer {bounds}, got {value!r}")
        if self.max_side is not None and self.min_side > self.max_side:
            raise InputError(f"--min-side {self.min_side} > --max-side {self.max_side} would reject every image")
        if self.reencode not in ("auto", "always"):
            raise InputError(f"--reencode must be 'auto' or 'always', got {self.reencode!r}")


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
    if s.max_side is None and max(height, width) > JPEG_MAX_SIDE:  # (max_side itself is <= the limit)
        raise ImageReject("side_too_long", f"{width}x{height}: a JPEG side is at most {JPEG_MAX_SIDE} "
                          "(set --max-side to shrink such images)")


def jpeg_has_exif(data: bytes) -> bool:
    """Whether a JPEG carries an EXIF APP1 segment: walks the marker segments up to the scan, so
    the common case (no EXIF) costs microseconds and never a parse."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: no more headers
            return False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\0\0":
            return True
        pos += 2 + max(length, 2)
    return False


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 of an opened image (1: upright; malformed EXIF counts as upright)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": read as upright, below
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not lose an otherwise good image
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _jpeg_orientation(data: bytes) -> int:
    if not jpeg_has_exif(data):
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on a damaged EXIF block
            with Image.open(io.BytesIO(data)) as image:
                return exif_orientation(image)
    except Exception:  # noqa: BLE001 - the full decode below decides whether the JPEG is usable
        return 1


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
        orientation = _jpeg_orientation(data)
        keep = (
            colorspace in _KEEP_COLORSPACES
            and settings.reencode != "always"
            and not _needs_resize(height, width, settings)
            and orientation == 1
        )
        if colorspace in _KEEP_COLORSPACES:
            try:  # strict: "Premature end of JPEG file" and other recoverable warnings are errors
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            except Exception as exc:
                raise ImageReject("decode_error", str(exc)) from None
            if keep:
                return PreparedImage(data, height, width, converted=False)
            return _encode(_upright(Image.fromarray(rgb), orientation), settings)
    return _encode(_decode_with_pillow(data, settings), settings)


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


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
            return _upright(_to_rgb(image), exif_orientation(image))
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
    try:
        jpeg = simplejpeg.encode_jpeg(rgb, quality=settings.jpeg_quality, colorspace="RGB")
    except Exception as exc:  # noqa: BLE001 - whatever libjpeg refuses is this image's problem
        raise ImageReject("encode_error", f"{width}x{height}: {exc}") from None
    return PreparedImage(jpeg, height, width, converted=True)
