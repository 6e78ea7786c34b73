"""`genlip shards merge`: check every planned unit is built, then write `manifest.json`.

Run once after all build tasks end. It refuses to write a manifest while any unit is missing or
fails to verify, or was made with another tokenizer or other settings than the folder's plan.json,
naming the first few offenders: so a manifest only ever lists shards of one consistent build.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter

from data_tools.build import PLAN_NAME, BuildError
from data_tools.sources import Unit
from data_tools.unit import report_path, settings_fingerprint
from genlip_megatron.data.input_files import InputFileError, read_bounded
from genlip_megatron.data.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ShardEntry
from genlip_megatron.data.shards import ShardError, ShardReader, fsync_dir, verify_shard
from genlip_megatron.data.tokenizer import file_sha256


def _load_json(path: str) -> dict:
    try:
        data = json.loads(read_bounded(path, 1 << 30))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (InputFileError, ValueError, RecursionError) as exc:
        raise BuildError(f"{path}: cannot read ({str(exc)[:200]})") from None


def _max_token_id(reader: ShardReader, report: dict) -> int:
    """From the report (free); a report of an older builder lacks it: read the shard's tokens."""
    if isinstance(report.get("max_token_id"), int):
        return report["max_token_id"]
    return max((int(reader[i].tokens.max(initial=-1)) for i in range(len(reader))), default=-1)


def merge(out_dir: str, full_verify: bool = False) -> Manifest:
    plan = _load_json(os.path.join(out_dir, PLAN_NAME))
    try:
        tokenizer = plan["tokenizer"]
        units = [Unit(**u) for u in plan["units"]]
        settings_sha = settings_fingerprint(plan["settings"])
    except (KeyError, TypeError) as exc:
        raise BuildError(f"{os.path.join(out_dir, PLAN_NAME)}: malformed plan ({exc})") from None
    copy = os.path.join(out_dir, TOKENIZER_NAME)
    try:
        copy_sha = file_sha256(copy)
    except (OSError, InputFileError):
        copy_sha = None
    if copy_sha != tokenizer["sha256"]:
        raise BuildError(f"{copy}: missing or not the tokenizer in {PLAN_NAME}")
    shards, problems, rejects = [], [], Counter()
    for unit in units:
        prefix = os.path.join(out_dir, unit.name)
        try:
            report = _load_json(report_path(out_dir, unit))
            reader = ShardReader(prefix)
            if full_verify:
                verify_shard(prefix, vocab_size=tokenizer["vocab_size"])
            if reader.tokenizer_sha256 != tokenizer["sha256"] or report.get("tokenizer_sha256") != tokenizer["sha256"]:
                raise ShardError(f"{prefix}.idx: made with another tokenizer (rebuild this unit)")
            if report.get("settings_sha256") != settings_sha:
                raise ShardError(f"{prefix}: built with other settings than {PLAN_NAME} (rebuild this unit)")
            if reader.index.bin_sha256 != report.get("bin_sha256") or len(reader) != report.get("num_samples"):
                raise ShardError(f"{prefix}: does not match its report (rebuild this unit)")
            max_token_id = _max_token_id(reader, report)
            if max_token_id >= tokenizer["vocab_size"]:
                raise ShardError(f"{prefix}: token id {max_token_id} >= vocabulary size {tokenizer['vocab_size']}")
        except (BuildError, ShardError) as exc:
            problems.append(str(exc))
            continue
        rejects.update(report["rejects"])
        if len(reader) == 0:
            continue  # every sample rejected: nothing to sample from
        with open(reader.idx_path, "rb") as f:
            idx_sha = hashlib.sha256(f.read()).hexdigest()
        shards.append(ShardEntry(unit.name, len(reader), reader.index.bin_size,
                                 reader.index.bin_sha256, idx_sha, max_token_id))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BuildError(f"{len(problems)} of {len(units)} units not ready: "
                         + "; ".join(problems[:3]) + more)
    manifest = Manifest(
        tokenizer={**tokenizer, "file": TOKENIZER_NAME},
        prompt_template=plan["prompt_template"],
        settings=plan["settings"],
        shards=shards,
        rejects=dict(sorted(rejects.items())),
        root=os.path.abspath(out_dir),
    )
    path = os.path.join(out_dir, MANIFEST_NAME)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # two merges at once each publish a whole manifest
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(out_dir)
    return manifest
