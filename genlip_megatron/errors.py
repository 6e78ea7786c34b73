"""The one error type the `genlip` command reports as text instead of a traceback.

`InputError` means "the input is wrong" (a file, a config key, a flag), never "the code is wrong":
its str() is one line per problem, naming the file, key or sample to fix. Every package's refusal
(ConfigError, CheckpointError, ConversionError, ...) derives from it, and cli.py turns it, and the
operating system's own refusals (OSError: a full disk, a read-only folder), into `genlip CMD: error:
...` lines and exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class InputError(ValueError):
    """Bad input; str() is one line per problem, each naming what to fix."""


def describe_os_error(exc: OSError) -> str:
    """'No space left on device (ENOSPC): /runs/a/iter_0000100' - one line, the path included."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) if isinstance(p, (bytes, os.PathLike)) else str(p) for p in paths)
    return f"{reason}{code}" + (f": {where}" if where else "")
