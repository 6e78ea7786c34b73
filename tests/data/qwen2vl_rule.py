"""The stage-2 size rule written out by hand from its description (docs/recipe.md), for the tests
to hold genlip_megatron.data.image_geometry.smart_resize against. Integer arithmetic where the
description allows it; the rounding of the first step is round-half-to-even, written explicitly."""

from __future__ import annotations

import math
from fractions import Fraction


def _round_half_even(value: Fraction) -> int:
    low = math.floor(value)
    rest = value - low
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and low % 2 == 1):
        return low + 1
    return low


def expected_size(height: int, width: int, factor: int = 16, min_pixels: int = 64 * 64,
                  max_pixels: int = 512 * 512) -> tuple[int, int] | None:
    """(h, w) per the rule, or None when the aspect ratio is above 200 (refused)."""
    if max(height, width) > 200 * min(height, width):
        return None
    h = _round_half_even(Fraction(height, factor)) * factor
    w = _round_half_even(Fraction(width, factor)) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        return (max(factor, math.floor(height / beta / factor) * factor),
                max(factor, math.floor(width / beta / factor) * factor))
    if h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        return math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w
