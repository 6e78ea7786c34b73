"""A conversion's output folder appears whole or not at all, and never keeps a previous export's files.

    with staged_output(out, is_previous=lambda f: ...) as stage:
        write everything into `stage`
    # success: `stage` has replaced `out`; any exception: `stage` is removed, `out` is untouched

The stage is a hidden sibling (`.<name>.partial-<pid>`) on the same file system, so the final step is
a rename. An `out` that already exists is replaced only when it is empty or `is_previous` recognises
it as an earlier export of the same kind: a second export of fewer shards into one folder then leaves
no stale `model-0000k-of-0000n` behind, and a folder of someone else's files is never deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator

from genlip_megatron.errors import InputError


class OutputFolderError(InputError):
    """The output folder cannot be (re)placed; str() is one line naming it."""


def _check_replaceable(out: str, is_previous: Callable[[str], bool]) -> None:
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise OutputFolderError(f"{out}: exists and is not a folder; choose another output path")
    if os.listdir(out) and not is_previous(out):
        raise OutputFolderError(f"{out}: holds files that are not an earlier export of this kind; "
                                "choose an empty or new folder")


@contextlib.contextmanager
def staged_output(out: str, is_previous: Callable[[str], bool]) -> Iterator[str]:
    out = os.path.abspath(out)
    _check_replaceable(out, is_previous)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    stage = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed run of this same process id
    os.makedirs(stage)
    try:
        yield stage
        old = os.path.join(parent, f".{name}.old-{os.getpid()}")
        replacing = os.path.lexists(out)
        if replacing:
            os.rename(out, old)
        try:
            os.rename(stage, out)
        except BaseException:
            if replacing:
                os.rename(old, out)  # put the previous export back
            raise
        if replacing:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
