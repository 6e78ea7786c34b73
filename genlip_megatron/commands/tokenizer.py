"""`genlip tokenizer train | info`: fit the offline demo BPE on captions, or describe a tokenizer.json."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train a byte-level BPE on captions (offline)")
    t.add_argument("inputs", nargs="+",
                   help=".txt (one caption per line), .jsonl, or shard-build inputs (tars, parquet)")
    t.add_argument("--out", required=True, help="path of the tokenizer.json to write")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--caption-field", action="append", help="caption field(s) (default: txt, caption)")
    i = sub.add_parser("info", help="name, hash, vocabulary, end and pad tokens of a tokenizer.json")
    i.add_argument("path")
    i.add_argument("--text", help="also show how this text is encoded")


def _captions(inputs: list[str], fields: tuple[str, ...]) -> Iterator[str]:
    from data_tools.captions import CaptionReject, CaptionSettings, select_caption
    from data_tools.sources import RawSample, SourceSettings, iter_unit, plan_units

    settings = CaptionSettings(fields=fields)
    texts = [p for p in inputs if p.endswith(".txt")]
    for path in texts:
        with open(path, "rb") as f:
            for line in f:
                yield line.decode("utf-8", errors="ignore").strip()
    others = [p for p in inputs if not p.endswith(".txt")]
    if not others:
        return
    source = SourceSettings()
    for unit in plan_units(others, source):
        for item in iter_unit(unit, source):
            if isinstance(item, RawSample):
                try:
                    yield select_caption(item.key, item.captions, settings)[0]
                except CaptionReject:
                    continue


def run(args) -> int:
    from genlip_megatron.data.tokenizer import Tokenizer, train_bpe

    try:
        if args.action == "train":
            fields = tuple(args.caption_field or ["txt", "caption"])
            train_bpe(_captions(args.inputs, fields), args.vocab_size, args.out, args.min_frequency)
            tok = Tokenizer.from_file(args.out)
            print(f"wrote {args.out}: vocab {tok.vocab_size:,}, end {tok.end_ids}, pad {tok.pad_id}, "
                  f"sha256 {tok.sha256[:12]}")
            return 0
        tok = Tokenizer.from_file(args.path)
        info = {**tok.identity, "vocab_size": tok.vocab_size, "end_ids": tok.end_ids, "pad_id": tok.pad_id}
        if args.text is not None:
            info["encoded"] = tok.encode(args.text)
        print(json.dumps(info, indent=1))
        return 0
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
