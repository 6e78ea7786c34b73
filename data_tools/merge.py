"""`genlip shards merge`: check every planned unit is built, then write `manifest.json`.

Run once after all build tasks end. It refuses to write a manifest while any unit is missing or
fails to verify, or when a shard was made with another tokenizer, naming the first few offenders.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

from data_tools.build import PLAN_NAME, BuildError
from data_tools.sources import Unit
from data_tools.unit import report_path
from genlip_megatron.data.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, ShardEntry
from genlip_megatron.data.shards import ShardError, ShardReader, fsync_dir, verify_shard
from genlip_megatron.data.tokenizer import file_sha256


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot read ({exc})") from None


def merge(out_dir: str, full_verify: bool = False) -> Manifest:
    plan = _load_json(os.path.join(out_dir, PLAN_NAME))
    tokenizer = plan["tokenizer"]
    copy = os.path.join(out_dir, TOKENIZER_NAME)
    if not os.path.exists(copy) or file_sha256(copy) != tokenizer["sha256"]:
        raise BuildError(f"{copy}: missing or not the tokenizer in {PLAN_NAME}")
    shards, problems, rejects = [], [], Counter()
    for unit in (Unit(**u) for u in plan["units"]):
        prefix = os.path.join(out_dir, unit.name)
        try:
            report = _load_json(report_path(out_dir, unit))
            reader = ShardReader(prefix)
            if full_verify:
                verify_shard(prefix)
            if reader.tokenizer_sha256 != tokenizer["sha256"]:
                raise ShardError(f"{prefix}.idx: made with another tokenizer")
            if reader.index.bin_sha256 != report["bin_sha256"] or len(reader) != report["num_samples"]:
                raise ShardError(f"{prefix}: does not match its report (rebuild this unit)")
        except (BuildError, ShardError) as exc:
            problems.append(str(exc))
            continue
        rejects.update(report["rejects"])
        if len(reader) == 0:
            continue  # every sample rejected: nothing to sample from
        with open(reader.idx_path, "rb") as f:
            idx_sha = hashlib.sha256(f.read()).hexdigest()
        shards.append(ShardEntry(unit.name, len(reader), reader.index.bin_size,
                                 reader.index.bin_sha256, idx_sha))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BuildError(f"{len(problems)} of {len(plan['units'])} units not ready: "
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
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync_dir(out_dir)
    return manifest
