"""`genlip shards build`: plan units, run this task's slice of them on N worker processes.

Layout of the output folder: `plan.json` (inputs, units, settings, tokenizer; identical for every
SLURM task of a build), `tokenizer.json` (a copy), and per unit `shard-XXXXXX.{bin,idx,report.json}`.
A unit whose report and shard verify is skipped, so re-running after a kill (or running the same
array task twice) finishes the work without duplicating or losing a sample.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict

from tqdm import tqdm

from data_tools.sources import Unit, plan_units
from data_tools.unit import BuildSettings, process_unit
from genlip_megatron.data.input_files import InputFileError, one_line, read_bounded
from genlip_megatron.data.manifest import TOKENIZER_NAME
from genlip_megatron.data.shards import fsync_dir
from genlip_megatron.data.tokenizer import MAX_TOKENIZER_BYTES, Tokenizer, file_sha256
from genlip_megatron.errors import InputError

PLAN_NAME = "plan.json"


class BuildError(InputError):
    """A build cannot start or finish; the message is one line naming the file."""


def _claim_plan(plan_path: str, plan: dict) -> None:
    """Create plan.json unless it exists, atomically (link of a complete temporary file): of two
    builds started at once into one folder exactly one plan wins, and the other build compares
    against it. plan.json is never rewritten, so a folder holds one build's shards only."""
    tmp = f"{plan_path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(plan, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, plan_path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    fsync_dir(os.path.dirname(plan_path))


def _check_plan(plan_path: str, plan: dict) -> None:
    try:
        previous = json.loads(read_bounded(plan_path, 1 << 30))
    except (InputFileError, ValueError, RecursionError) as exc:
        raise BuildError(f"{plan_path}: cannot read ({exc}); use a new output directory") from None
    if not isinstance(previous, dict):
        raise BuildError(f"{plan_path}: not a build plan; use a new output directory")
    if previous != plan:
        differ = [k for k in sorted(set(plan) | set(previous)) if plan.get(k) != previous.get(k)]
        raise BuildError(
            f"{plan_path}: this folder holds a build with other {', '.join(differ)}; a folder holds one "
            "build (same inputs, settings, tokenizer and prompt): use a new output directory"
        )


def _prepare_output(out_dir: str, plan: dict, tokenizer_path: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-probe-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise BuildError(f"{out_dir}: cannot write to the output directory ({exc.strerror or exc})") from None
    plan_path = os.path.join(out_dir, PLAN_NAME)
    if not os.path.lexists(plan_path):
        _claim_plan(plan_path, plan)
    _check_plan(plan_path, plan)
    copy = os.path.join(out_dir, TOKENIZER_NAME)
    if not os.path.isfile(copy) or file_sha256(copy) != plan["tokenizer"]["sha256"]:
        data = read_bounded(tokenizer_path, MAX_TOKENIZER_BYTES)  # the very bytes whose hash is planned
        if hashlib.sha256(data).hexdigest() != plan["tokenizer"]["sha256"]:
            raise BuildError(f"{tokenizer_path}: changed while the build started")
        tmp = f"{copy}.{uuid.uuid4().hex}.tmp"  # tasks may copy at the same time
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, copy)


def make_plan(inputs: list[str], tokenizer: Tokenizer, settings: BuildSettings, prompt: str) -> dict:
    units = plan_units(inputs, settings.source)
    if not units:
        raise BuildError(f"no input files found in {inputs}")
    plan = {
        "units": [asdict(u) for u in units],
        "settings": settings.to_dict(),
        "tokenizer": {**tokenizer.identity, "vocab_size": tokenizer.vocab_size,
                      "end_ids": tokenizer.end_ids, "pad_id": tokenizer.pad_id},
        "prompt_template": prompt,
    }
    return json.loads(json.dumps(plan))  # the JSON form, so it compares equal to a plan read back


def task_slice(units: list, task_index: int, num_tasks: int) -> list:
    """Round-robin slice: neighbouring (similar-sized) units spread over tasks."""
    if num_tasks < 1:
        raise BuildError(f"the number of tasks must be at least 1, got {num_tasks}")
    if not 0 <= task_index < num_tasks:
        raise BuildError(f"task index {task_index} is outside 0..{num_tasks - 1}")
    return units[task_index::num_tasks]


def run_build(inputs: list[str], out_dir: str, tokenizer_path: str, settings: BuildSettings,
              prompt: str, workers: int = 1, task_index: int = 0, num_tasks: int = 1,
              progress: bool = True) -> dict:
    """Build this task's units; return {"reports": [...], "failed": [...], "totals": {...}}."""
    if workers < 1:
        raise BuildError(f"--workers must be at least 1, got {workers}")
    task_slice([], task_index, num_tasks)  # refuse a bad slice before anything is written
    tokenizer_path = os.path.abspath(tokenizer_path)
    tokenizer = Tokenizer.from_file(tokenizer_path)
    plan = make_plan(inputs, tokenizer, settings, prompt)
    _prepare_output(out_dir, plan, tokenizer_path)
    mine = [Unit(**u) for u in task_slice(plan["units"], task_index, num_tasks)]
    reports, failed = [], []
    bar = tqdm(total=len(mine), unit="shard", disable=not progress, file=sys.stderr,
               desc=f"build {out_dir}")
    samples = 0

    def done(unit: Unit, report: dict | None, error: str | None) -> None:
        nonlocal samples
        if error is not None:
            failed.append(unit.name)
            tqdm.write(one_line(f"error: {unit.name} ({unit.path}): {error}"), file=sys.stderr)
        else:
            reports.append(report)
            samples += report["num_samples"]
            for line in report["errors"]:
                tqdm.write(one_line(f"warning: {line}"), file=sys.stderr)
        bar.update(1)
        bar.set_postfix(samples=samples, failed=len(failed))

    if workers <= 1:
        for unit in mine:
            try:
                done(unit, process_unit(unit, out_dir, tokenizer_path, settings), None)
            except Exception as exc:  # one bad unit must not stop the others
                done(unit, None, f"{type(exc).__name__}: {exc}")
    else:
        # spawn: workers start clean (no inherited tokenizer thread pools or tqdm locks).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(process_unit, u, out_dir, tokenizer_path, settings): u for u in mine}
            for future in as_completed(futures):
                try:
                    done(futures[future], future.result(), None)
                except Exception as exc:
                    done(futures[future], None, f"{type(exc).__name__}: {exc}")
    bar.close()
    reports.sort(key=lambda r: r["unit"])
    return {"reports": reports, "failed": sorted(failed), "totals": summarize(reports)}


def summarize(reports: list[dict]) -> dict:
    rejects, repairs = Counter(), Counter()
    for r in reports:
        rejects.update(r["rejects"])
        repairs.update(r["repairs"])
    return {
        "units": len(reports),
        "skipped": sum(bool(r.get("skipped")) for r in reports),
        "samples": sum(r["num_samples"] for r in reports),
        "rejected": sum(rejects.values()),
        "reencoded": sum(r["reencoded"] for r in reports),
        "bin_bytes": sum(r["bin_bytes"] for r in reports),
        "rejects": dict(sorted(rejects.items())),
        "repairs": dict(sorted(repairs.items())),
    }
