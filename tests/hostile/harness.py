"""What every hostile-input case asserts, in one place (tests/hostile/*).

    outcome = run_command(["convert", "to-hf", crafted, out])   # `genlip ...` in this process
    outcome.refused_in_one_line("common.pt")                     # exit 2, ONE stderr line naming it
    assert outcome.peak_mb < PEAK_MB_LIMIT                       # bounded memory for this case
    marker = Marker(tmp_path); marker.reduce(); marker.fired     # a payload's proof of execution
    snapshot(folder) == snapshot(folder)                         # data written before is intact

A payload never gets to run: each one, if it ever executed, would create its marker file, and every
case asserts the marker is absent. Peak memory is this process's high-water mark (VmHWM), reset just
before the case, minus its resident memory then: an earlier test's peak cannot hide this case's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from dataclasses import dataclass

from genlip_megatron.cli import main

# Growth of resident memory a case may cause: first imports (transformers, megatron-core) cost a few
# hundred MB; an unbounded read of a hostile file costs gigabytes.
PEAK_MB_LIMIT = 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    peak_mb: float  # how far this case raised the process's resident memory above its start, MB

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def refused_in_one_line(self, *needles: str, code: int = 2) -> str:
        """Exit code `code` (2: refused input; `genlip config` and `genlip train` say 1 for a config
        problem) and exactly one non-empty stderr line containing every needle; returns that line."""
        lines = self.error_lines()
        assert self.code == code, f"exit code {self.code}, stderr:\n{self.stderr}"
        assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{self.stderr}"
        for needle in needles:
            assert needle in lines[0], f"{needle!r} not named in: {lines[0]}"
        assert "Traceback" not in self.stderr
        return lines[0]


def run_command(argv: list[str]) -> Outcome:
    """`genlip ARGV` in this process: exit code, captured output and the case's peak memory."""
    out, err = io.StringIO(), io.StringIO()
    measured = _reset_hwm()
    start = _status_kb("VmRSS")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    peak = (_status_kb("VmHWM") - start) / 1024 if measured else 0.0
    return Outcome(code, out.getvalue(), err.getvalue(), peak)


class Marker:
    """A file that exists only if hostile input ran code: `payload()` is the Python that makes it."""

    def __init__(self, folder):
        self.path = os.path.join(str(folder), "PAYLOAD_RAN")

    def payload_source(self) -> str:
        return f"open({self.path!r}, 'w').close()"

    def reduce(self):
        """An object whose unpickling runs payload_source() (the classic pickle exploit)."""
        return _Exploit(self.payload_source())

    @property
    def fired(self) -> bool:
        return os.path.exists(self.path)


class _Exploit:
    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


def snapshot(folder) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (to prove nothing changed)."""
    digests = {}
    for root, _, files in os.walk(str(folder)):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, str(folder))] = hashlib.sha256(f.read()).hexdigest()
    return digests
