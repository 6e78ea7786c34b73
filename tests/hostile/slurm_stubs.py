"""Fake `srun`, `scontrol`, `sbatch`, `torchrun` and `python` that only record their arguments, and
a reference reader of #SBATCH lines, for running rendered job scripts where nothing real may start.

    stubs = Stubs(tmp_path)                  # a bin/ folder; stubs.env(...) puts it first on PATH
    subprocess.run(["bash", script], env=stubs.env(SLURM_JOB_ID="4242"))
    stubs.calls()                            # [["srun", arg, ...], ["scontrol", ...], ...]

`sbatch_arguments(line)` splits an `#SBATCH` line the way sbatch 22.05 does (src/sbatch/opt.c,
checked against the real sbatch of tests/launch/test_slurm.py's cluster): arguments end at an
unquoted space; ' and " group; a backslash escapes the next character (but not a space outside
quotes); an unquoted # ends the line.
"""

from __future__ import annotations

import json
import os
import sys

STUB_NAMES = ("srun", "scontrol", "sbatch", "torchrun", "python")
_STUB = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([name] + sys.argv[1:]) + "\\n")
if name == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
    print("node0")
if name == "sbatch":
    print("4242")
if name == "srun" and os.environ.get("STUB_RANK_EXIT") and "--overlap" not in sys.argv:
    # the training step: record a rank that checkpointed and stopped (exit 75) beside its logs
    output = next(a for a in sys.argv if a.startswith("--output="))[len("--output="):]
    with open(os.path.join(os.path.dirname(output), "exit-0"), "w") as f:
        f.write(os.environ["STUB_RANK_EXIT"] + "\\n")
"""


class Stubs:
    def __init__(self, folder):
        self.bin = os.path.join(str(folder), "stub-bin")
        self.log = os.path.join(str(folder), "stub-calls.jsonl")
        os.makedirs(self.bin, exist_ok=True)
        for name in STUB_NAMES:
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(_STUB.format(python=sys.executable))
            os.chmod(path, 0o755)

    def env(self, **extra: str) -> dict:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "STUB_LOG": self.log, "HOME": os.environ.get("HOME", "/"),
               "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node0", "SLURM_NNODES": "1",
               "SLURM_NODEID": "0", "SLURM_ARRAY_TASK_ID": "3"}
        env.update(extra)
        return env

    def calls(self) -> list[list[str]]:
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f]


def sbatch_arguments(line: str) -> list[str]:
    """The arguments sbatch reads from one `#SBATCH ...` line."""
    assert line.startswith("#SBATCH")
    text, i, out = line[len("#SBATCH"):], 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text) or text[i] == "#":
            return out
        arg, quote, escape = [], None, False
        while i < len(text) and (quote or not text[i].isspace()):
            ch = text[i]
            i += 1
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
                continue
            elif quote:
                if ch == quote:
                    quote = None
                    continue
            elif ch in "\"'":
                quote = ch
                continue
            elif ch == "#":
                out.append("".join(arg))
                return out
            arg.append(ch)
        out.append("".join(arg))


def directives(script: str) -> list[str]:
    """Every argument of the script's #SBATCH lines (those before the first command), in order."""
    found = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            found += sbatch_arguments(line)
        elif line.strip() and not line.startswith("#"):
            break
    return found
