"""Read files whose names come from outside (inputs, JSONL image paths, tokenizer files) safely.

Whatever a path names, reading it must neither block nor grow without bound: a FIFO would block
`open()` forever, a symlink to /dev/zero never ends, a 1 TB "image" would fill memory. So every
such read goes through here: regular files only (checked before opening and again on the open
descriptor, which is opened non-blocking so a FIFO swapped in between cannot hang it), and at most
`limit` bytes, refused unread when the file is larger. Failures raise `InputFileError` with a
stable `reason` and a one-line message naming the file.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Iterator, Optional

from genlip_megatron.errors import InputError

__all__ = ["InputFileError", "open_regular", "read_bounded", "count_lines", "iter_lines", "one_line"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class InputFileError(InputError):
    """`reason`: "unreadable" (missing, no permission, bad name), "not_regular_file" or "too_large"."""

    def __init__(self, path: str, reason: str, detail: str):
        super().__init__(f"{_shown(path)}: {detail}")
        self.path, self.reason = path, reason


def one_line(text: str) -> str:
    """`text` safe to print as one line: control characters (a newline in a file name) and lone
    surrogates escaped, everything printable kept as is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for ch in text)


def _shown(path) -> str:
    return one_line(os.fsdecode(path) if isinstance(path, bytes) else str(path))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, buffering: int = -1) -> BinaryIO:
    """Open a regular file for binary reading; refuse anything else without blocking on it."""
    try:
        os.fsencode(path)  # a lone surrogate cannot name a file: a clear error, not a UnicodeEncodeError
        if "\0" in os.fsdecode(path):
            raise ValueError("embedded NUL byte")
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # checked before open(): opening a device can have side effects
            raise InputFileError(path, "not_regular_file", f"{_kind(mode)}, not a regular file")
        fd = os.open(path, _OPEN_FLAGS)
    except InputFileError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: NUL byte or an unencodable name
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputFileError(path, "unreadable", f"cannot open ({detail})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between stat() and open()
            raise InputFileError(path, "not_regular_file", f"{_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str, limit: int) -> bytes:
    """The whole content of a regular file of at most `limit` bytes (a larger one is refused unread)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise InputFileError(path, "too_large", f"{size} bytes > limit {limit}")
        try:
            data = f.read(limit + 1)  # st_size can lie (procfs, a file growing while read): stop anyway
        except OSError as exc:
            raise InputFileError(path, "unreadable", f"cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InputFileError(path, "too_large", f"more than {limit} bytes")
    return data


def count_lines(f: BinaryIO, chunk: int = 1 << 20) -> int:
    """Lines as `iter_lines` (and `for line in f`) counts them, read in fixed-size chunks."""
    count, last = 0, b"\n"
    while block := f.read(chunk):
        count += block.count(b"\n")
        last = block[-1:]
    return count + (last != b"\n")


def iter_lines(f: BinaryIO, limit: int) -> Iterator[Optional[bytes]]:
    """Each line of `f` (with its newline), or None for a line of more than `limit` bytes before its
    newline, which is skipped in bounded pieces (never held in memory whole)."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if line.endswith(b"\n") or len(line) <= limit:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = f.readline(1 << 20)
        yield None
