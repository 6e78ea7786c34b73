"""`genlip shards build | merge | info | verify | show` (docs/shards.md).

This module is the edge: it is the only place that reads SLURM_ARRAY_* variables, translating them
into `--task-index/--num-tasks` for data_tools.build.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from genlip_megatron.config.schema import DataConfig
from genlip_megatron.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="preprocess inputs into shards (resumable; one unit per input)")
    b.add_argument("inputs", nargs="+", help="tars, parquet files, JSONL files, folders or globs")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--tokenizer", required=True, help="a tokenizers tokenizer.json")
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--task-index", type=int, help="this task's slice (default: SLURM_ARRAY_TASK_ID or 0)")
    b.add_argument("--num-tasks", type=int, help="number of slices (default: SLURM_ARRAY_TASK_COUNT or 1)")
    b.add_argument("--caption-field", action="append", help="caption field, repeatable (default: txt)")
    b.add_argument("--caption-mix", help="comma-separated weights, one per --caption-field")
    b.add_argument("--image-field", default="image", help="parquet column / JSONL key of the image")
    b.add_argument("--key-field", default="key", help="parquet column / JSONL key of the sample id")
    b.add_argument("--image-root", help="JSONL: folder image paths are relative to")
    b.add_argument("--jsonl-lines-per-shard", type=int, default=10000)
    b.add_argument("--max-image-bytes", type=int, default=64 << 20,
                   help="larger images (tar members, files, parquet cells) are rejected unread")
    b.add_argument("--max-side", type=int, help="resize images whose longer side exceeds this")
    b.add_argument("--min-side", type=int, default=1, help="reject images smaller than this")
    b.add_argument("--max-pixels", type=int, default=64_000_000, help="decompression-bomb limit")
    b.add_argument("--jpeg-quality", type=int, default=95)
    b.add_argument("--reencode", choices=["auto", "always"], default="auto")
    b.add_argument("--max-caption-chars", type=int, default=4000)
    b.add_argument("--max-caption-tokens", type=int, default=None,
                   help="reject captions of more tokens (default: keep every caption; training cuts a "
                        "sample at data.max_sample_tokens, as the official recipe does)")
    b.add_argument("--seed", type=int, default=0, help="seed of the caption-field mix")
    b.add_argument("--prompt", default=DataConfig().prompt, help="prompt template to record")
    b.add_argument("--no-merge", action="store_true", help="skip the merge even for a single task")
    b.add_argument("--no-progress", action="store_true")
    m = sub.add_parser("merge", help="check all units and write manifest.json")
    m.add_argument("out")
    m.add_argument("--verify", action="store_true", help="also re-hash every shard")
    i = sub.add_parser("info", help="counts, sizes, caption lengths, reject reasons")
    i.add_argument("manifest")
    i.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="re-hash every shard against its index and the manifest")
    v.add_argument("manifest")
    s = sub.add_parser("show", help="write sample N's image and caption")
    s.add_argument("manifest")
    s.add_argument("index", type=int)
    s.add_argument("--out", default=".")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value[:40]!r} is not an integer") from None


def _slice(args) -> tuple[int, int]:
    task = args.task_index
    count = args.num_tasks
    if task is None:
        task = _env_int("SLURM_ARRAY_TASK_ID", 0) - _env_int("SLURM_ARRAY_TASK_MIN", 0)
    if count is None:
        count = _env_int("SLURM_ARRAY_TASK_COUNT", 1)
    return task, count


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--caption-mix {text[:60]!r}: expected comma-separated numbers") from None


def _build(args) -> int:
    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.merge import merge
    from data_tools.sources import SourceSettings
    from data_tools.unit import BuildSettings
    from genlip_megatron.data.image_codec import ImageSettings

    fields = tuple(args.caption_field or ["txt"])
    mix = _weights(args.caption_mix) if args.caption_mix else None
    settings = BuildSettings(
        source=SourceSettings(args.image_field, args.key_field, args.image_root,
                              max_member_bytes=args.max_image_bytes,
                              jsonl_lines_per_unit=args.jsonl_lines_per_shard),
        caption=CaptionSettings(fields, mix, args.max_caption_chars, args.max_caption_tokens, args.seed),
        image=ImageSettings(args.max_side, args.min_side, args.max_pixels, args.jpeg_quality, args.reencode),
    )
    task, count = _slice(args)
    result = run_build(args.inputs, args.out, args.tokenizer, settings, args.prompt, args.workers,
                       task, count, progress=not args.no_progress)
    t = result["totals"]
    print(f"built {t['units'] - t['skipped']} units ({t['skipped']} already done): {t['samples']:,} samples, "
          f"{t['rejected']:,} rejected, {t['reencoded']:,} re-encoded, {t['bin_bytes'] / 1e6:,.1f} MB")
    for reason, n in t["rejects"].items():
        print(f"  rejected {reason:<24} {n:>10,}")
    for reason, n in t["repairs"].items():
        print(f"  repaired {reason:<24} {n:>10,}")
    if result["failed"]:
        print(f"error: {len(result['failed'])} units failed ({', '.join(result['failed'][:5])}); "
              "re-run the same command to retry them", file=sys.stderr)
        return 1
    if t["samples"] == 0 and t["rejected"] > 0:
        print(_nothing_kept(result["reports"], t, args), file=sys.stderr)
        return 1
    if count == 1 and not args.no_merge:
        manifest = merge(args.out)
        print(f"wrote {os.path.join(args.out, 'manifest.json')}: {manifest.num_samples:,} samples "
              f"in {len(manifest.shards)} shards")
    return 0


def _nothing_kept(reports: list[dict], totals: dict, args) -> str:
    """One line for a build whose every sample was rejected: the top reasons with an example each,
    and the fields the build looked for (the usual cause: captions under another field name)."""
    examples = {}
    for report in reports:
        for key, reason, detail in report.get("examples", []):
            examples.setdefault(reason, (key, detail.removeprefix(f"{reason}: ")))
    top = sorted(totals["rejects"].items(), key=lambda kv: -kv[1])[:3]
    reasons = "; ".join(f"{reason} x{n:,}" + (f" (e.g. {examples[reason][0]!r}: {examples[reason][1]})"
                                              if reason in examples else "") for reason, n in top)
    fields = args.caption_field or ["txt"]
    return (f"error: the build kept no sample: all {totals['rejected']:,} were rejected: {reasons}. "
            f"It looked for captions in {fields} (--caption-field) and images in {args.image_field!r} "
            "(--image-field; tars: jpg/png/webp members); pass the fields your data uses")


def run(args) -> int:
    """Refusals (bad flags, inputs, shards) are InputErrors: cli.py prints them as one line, exit 2."""
    if args.action == "build":
        return _build(args)
    if args.action == "merge":
        from data_tools.merge import merge

        manifest = merge(args.out, full_verify=args.verify)
        print(f"wrote manifest: {manifest.num_samples:,} samples in {len(manifest.shards)} shards")
        return 0
    from data_tools import inspect_dataset

    if args.action == "info":
        info = inspect_dataset.dataset_info(args.manifest)
        print(json.dumps(info, indent=1) if args.json else inspect_dataset.format_info(info))
        return 0
    if args.action == "verify":
        from genlip_megatron.data.input_files import one_line

        problems = inspect_dataset.verify_dataset(args.manifest)
        for line in problems:
            print(one_line(f"error: {line}"), file=sys.stderr)
        print("ok" if not problems else f"{len(problems)} problems found")
        return 1 if problems else 0
    image, text = inspect_dataset.show_sample(args.manifest, args.index, args.out)
    print(f"wrote {image} and {text}")
    return 0
