"""Stream samples out of a WebDataset tar (img2dataset layout) without extracting anything to disk.

Members are grouped by key (the member path up to the first dot of its file name), as WebDataset
does: `0001/000000017.jpg`, `0001/000000017.txt`, `0001/000000017.json` are one sample. Since no
member is ever written to disk, a `../` or absolute member name cannot escape anywhere; it is still
rejected (`unsafe_path`) because such a tar was not written by img2dataset.
"""

from __future__ import annotations

import posixpath
from typing import Callable, Iterator

from data_tools.captions import CaptionReject, parse_json_fields
from data_tools.sources import Item, RawSample, Reject, SourceSettings
from data_tools.tar_stream import (
    DIRECTORY_TYPE,
    REGULAR_TYPES,
    STREAM_ERRORS,
    iter_tar_members,
    open_tar_stream,
)

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
CAPTION_EXTENSIONS = {"txt", "json"}
MAX_CAPTION_MEMBER_BYTES = 1 << 20  # a .txt/.json member above this is rejected unread


def split_member_name(name: str) -> tuple[str, str]:
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _is_unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name or "\0" in name


def _member_limit(settings: SourceSettings) -> Callable[[str], int]:
    """Bytes of a member worth reading: images up to max_member_bytes, captions up to 1 MiB, and
    nothing of any other member (its name still counts for the sample's grouping)."""

    def limit(name: str) -> int:
        ext = name[name.rfind("/") + 1 :].partition(".")[2].lower()  # split_member_name's, cheaply
        if ext in IMAGE_EXTENSIONS:
            return settings.max_member_bytes
        return MAX_CAPTION_MEMBER_BYTES if ext in CAPTION_EXTENSIONS else -1

    return limit


class _TooLarge(str):
    """Marks a member skipped unread for its size; the whole sample is then one reject."""


def _group_to_item(key: str, members: dict[str, bytes]) -> Item:
    too_large = [m for m in members.values() if isinstance(m, _TooLarge)]
    if too_large:
        return Reject(key, "member_too_large", too_large[0])
    images = [ext for ext in members if ext in IMAGE_EXTENSIONS]
    has_caption = any(ext in CAPTION_EXTENSIONS for ext in members)
    if not images:
        return Reject(key, "missing_image" if has_caption else "no_usable_member", ",".join(members))
    captions: dict = {}
    if "txt" in members:
        captions["txt"] = members["txt"]
    if "json" in members:
        try:
            captions.update(parse_json_fields(members["json"]))
        except CaptionReject as exc:
            return Reject(key, exc.reason, str(exc))
    return RawSample(key, members[images[0]], captions)


def iter_tar(path: str, settings: SourceSettings) -> Iterator[Item]:
    seen: set[str] = set()  # keys already emitted: a later group with the same key is a duplicate
    key, members, dup_key = None, {}, None
    count = 0
    try:
        with open_tar_stream(path) as stream:
            for name, kind, data, size, problem in iter_tar_members(stream, _member_limit(settings)):
                count += 1
                if kind == DIRECTORY_TYPE:
                    continue
                if problem is not None:  # its name may be wrong: it joins no group
                    yield Reject(name, "bad_tar_header", problem)
                    continue
                if kind not in REGULAR_TYPES:
                    yield Reject(name, "unsafe_member", "link or device member")
                    continue
                if _is_unsafe(name):
                    yield Reject(name, "unsafe_path")
                    continue
                member_key, ext = split_member_name(name)
                if member_key == dup_key:
                    continue
                if member_key != key:
                    if key is not None:
                        yield _group_to_item(key, members)
                        seen.add(key)
                    key, members, dup_key = member_key, {}, None
                    if member_key in seen:  # counted once per duplicate sample, then skipped
                        yield Reject(member_key, "duplicate_key", name)
                        key, dup_key = None, member_key
                        continue
                if ext in members:
                    yield Reject(member_key, "duplicate_key", name)
                    continue
                if data is None and (ext in IMAGE_EXTENSIONS or ext in CAPTION_EXTENSIONS):
                    data = _TooLarge(f"{name}: {size} bytes")
                members[ext] = data  # None for a member of another kind: named, never read
    except STREAM_ERRORS as exc:
        # The sample in flight may lack members: drop it rather than guess; earlier ones are whole.
        if key is not None:
            yield Reject(key, "truncated_input", f"{path}: {exc}")
        yield Reject(path, "input_error", f"{path}: unreadable after {count} members ({exc})")
        return
    if key is not None:
        yield _group_to_item(key, members)
