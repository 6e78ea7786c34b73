"""Shared pieces of the data-path hostile-input tests: a small tokenizer, a CLI runner that bounds
time and memory, and folder snapshots (to show a re-run completes identically and nothing outside
the output folder is touched).

Every build or verify of a hostile input runs as a child process under a wall-clock timeout and an
address-space limit (RLIMIT_AS), so a hang fails the test at the timeout and unbounded reading fails
it with a MemoryError, instead of stalling or exhausting the machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile

from data_tools.synthetic import make_caption
from genlip_megatron.data.tokenizer import train_bpe

TIMEOUT_S = 180  # generous: the shared test machine can be loaded; a hang runs past it
MEMORY_LIMIT = 2 << 30  # address space of a build process (it needs ~0.3 GB)


@functools.lru_cache(maxsize=1)
def tokenizer_file() -> str:
    """A deterministic byte-level BPE of 400 tokens over the synthetic captions (made once)."""
    path = os.path.join(tempfile.mkdtemp(prefix="hostile-tok-"), "tokenizer.json")
    texts = [make_caption(i) for i in range(300)] + ["a photo of a cat", "ünïcødé 日本"]
    train_bpe(texts, 400, path, min_frequency=1)
    return path


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def genlip(*args: str, cwd: str | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `genlip ARGS...` in a child process limited in time and memory."""
    return subprocess.run([sys.executable, "-m", "genlip_megatron.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory)


def build(inputs, out, *flags: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return genlip("shards", "build", *inputs, "--out", out, "--tokenizer", tokenizer_file(),
                  "--no-progress", *flags, cwd=cwd)


def assert_one_line_errors(proc: subprocess.CompletedProcess) -> list[str]:
    """No traceback; every stderr line is a one-line message: the command's refusal (`genlip shards:
    error: ...`) or a per-unit `error:`/`warning:` line. Returns them."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for line in lines:
        assert line.startswith(("error: ", "warning: ", "genlip shards: error: ")), proc.stderr[-3000:]
    return lines


def report(out, unit: str = "shard-000000") -> dict:
    with open(os.path.join(out, unit + ".report.json")) as f:
        return json.load(f)


def reports(out) -> dict[str, dict]:
    return {name[: -len(".report.json")]: report(out, name[: -len(".report.json")])
            for name in sorted(os.listdir(out)) if name.endswith(".report.json")}


def snapshot(folder) -> dict[str, str]:
    """Relative path -> sha256 of every file (symlinks and FIFOs by their kind, never read)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            elif not os.path.isdir(path):
                out[rel] = "special"
    return out
