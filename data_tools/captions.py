"""Pick, clean and filter one caption per sample.

Several caption fields may exist (Recap-DataComp: `re_caption`, `org_caption`); `fields` lists them
and `mix` optionally gives the share of samples that should use each. The pick is a hash of the
sample key, not a random draw, so a re-run (or a resumed run) chooses exactly the same captions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from data_tools.sources import SampleProblem
from genlip_megatron.errors import InputError

_WHITESPACE = re.compile(r"\s+")
MAX_RAW_CAPTION = 1 << 20  # characters (or bytes) of one caption field before cleaning


class CaptionReject(SampleProblem):
    """A sample's caption cannot be used (reason: missing_caption, empty_caption, caption_too_long,
    bad_json, ...)."""


@dataclass(frozen=True)
class CaptionSettings:
    fields: tuple[str, ...] = ("txt",)
    mix: Optional[tuple[float, ...]] = None  # weights per field; None -> first present field wins
    max_chars: int = 4000
    max_tokens: Optional[int] = None  # reject longer captions; None: keep all (training caps samples)
    seed: int = 0

    def __post_init__(self):
        if not self.fields or not all(isinstance(f, str) and f for f in self.fields):
            raise InputError(f"--caption-field must name non-empty fields, got {list(self.fields)}")
        if self.mix is not None:
            if len(self.mix) != len(self.fields):
                raise InputError(f"--caption-mix has {len(self.mix)} weights for {len(self.fields)} fields")
            if not all(math.isfinite(w) and w >= 0 for w in self.mix) or not sum(self.mix) > 0:
                raise InputError(f"--caption-mix weights must be finite, >= 0 and not all 0, got {list(self.mix)}")
        for name, flag in (("max_chars", "--max-caption-chars"), ("max_tokens", "--max-caption-tokens")):
            value = getattr(self, name)
            if name == "max_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be a positive integer, got {value!r}")
        if self.max_chars > MAX_RAW_CAPTION:
            raise InputError(f"--max-caption-chars must be at most {MAX_RAW_CAPTION}, got {self.max_chars}")


def parse_json(raw: bytes) -> object:
    """`json.loads` that fails only with a one-line ValueError, also for nesting too deep for the
    parser (RecursionError) and for bytes that are not UTF-8."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"invalid JSON ({str(exc)[:100]})") from None


def parse_json_fields(raw: bytes) -> dict:
    """Top-level string fields of a WebDataset .json member; CaptionReject("bad_json") when it is
    not a JSON object."""
    try:
        data = parse_json(raw)
    except ValueError as exc:
        raise CaptionReject("bad_json", str(exc)) from None
    if not isinstance(data, dict):
        raise CaptionReject("bad_json", f"a JSON {type(data).__name__}, not an object")
    return {k: v for k, v in data.items() if isinstance(v, (str, bytes))}


def clean_caption(raw: str | bytes) -> tuple[str, bool]:
    """Return (cleaned text, repaired): invalid UTF-8 bytes dropped, control characters removed,
    whitespace runs collapsed to one space, ends stripped."""
    repaired = False
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw, repaired = raw.decode("utf-8", errors="ignore"), True
    if not raw.isprintable():  # fast path: most captions have no control or format characters
        raw = "".join(ch for ch in raw if ch.isspace() or unicodedata.category(ch)[0] != "C")
    return _WHITESPACE.sub(" ", raw).strip(), repaired


def _field_order(key: str, settings: CaptionSettings) -> list[str]:
    fields = list(settings.fields)
    if not settings.mix or len(fields) < 2:
        return fields
    digest = hashlib.blake2b(f"{settings.seed}:{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64 * sum(settings.mix)
    acc = 0.0
    for i, weight in enumerate(settings.mix):
        acc += weight
        if u < acc:
            return [fields[i]] + fields[:i] + fields[i + 1 :]
    return fields[-1:] + fields[:-1]


def select_caption(key: str, captions: dict, settings: CaptionSettings) -> tuple[str, dict]:
    """Return (caption, repairs) where repairs counts fixes like {"invalid_utf8": 1}; raise
    CaptionReject("missing_caption" | "empty_caption" | "caption_too_long")."""
    repairs: dict = {}
    order = _field_order(key, settings)
    present = [f for f in order if isinstance(captions.get(f), (str, bytes))]
    if not present:
        found = sorted(str(k) for k, v in captions.items() if isinstance(v, str))
        raise CaptionReject("missing_caption", f"no field among {list(settings.fields)}; "
                                               f"text fields of the sample: {found}")
    for name in present:
        if len(captions[name]) > MAX_RAW_CAPTION:  # bounded work per sample (nobody captions in megabytes)
            raise CaptionReject("caption_too_long", f"{len(captions[name])} characters before cleaning")
        text, repaired = clean_caption(captions[name])
        if not text:
            continue
        if repaired:
            repairs["invalid_utf8"] = 1
        if name != order[0]:
            repairs["caption_fallback"] = 1  # the mix's pick was missing or empty
        if len(text) > settings.max_chars:
            raise CaptionReject("caption_too_long", f"{len(text)} characters > {settings.max_chars}")
        return text, repairs
    raise CaptionReject("empty_caption")
