"""`genlip convert {to-hf,from-hf,to-timm}`: checkpoints to and from Hugging Face and timm (docs/conversion.md).

    genlip convert to-hf   runs/l16/iter_0033000 hf/genlip-l16 [--dtype bf16] [--tokenizer tok.json]
                                                                [--eval-json results.json ...]
    genlip convert from-hf hf/genlip-l16 ckpt/stage2-init --tp 2 --pp 4 [--vpp 2] [--config genlip_g16_stage2]
    genlip convert to-timm hf/genlip-l16 timm/genlip-l16   (or a megatron checkpoint as the source)

A refused conversion prints one line saying why and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _size(text: str) -> int:
    units = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[:-len(unit)]) * factor)
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", required=True)
    to_hf = sub.add_parser("to-hf", help="megatron checkpoint (any layout) -> HF folder (official GenLIP layout)")
    to_hf.add_argument("checkpoint", help="run directory (follows `latest`) or iter_XXXXXXX folder")
    to_hf.add_argument("out")
    to_hf.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: as stored")
    to_hf.add_argument("--max-shard-size", type=_size, default=2 * 10 ** 9, help="e.g. 5GB (default 2GB)")
    to_hf.add_argument("--tokenizer", help="tokenizer.json, HF tokenizer folder or dataset folder "
                                           "(default: the run's training dataset's)")
    to_hf.add_argument("--without-tokenizer", action="store_true",
                       help="export the model without a tokenizer (otherwise a missing one is refused)")
    to_hf.add_argument("--eval-json", action="append", default=[], help="`genlip eval --json` results")

    from_hf = sub.add_parser("from-hf", help="HF GenLIP folder -> megatron checkpoint to continue training")
    from_hf.add_argument("hf_folder")
    from_hf.add_argument("out", help="checkpoint folder to create; train with checkpoint.load=OUT "
                                     "checkpoint.finetune=true")
    from_hf.add_argument("--tp", type=int, default=1)
    from_hf.add_argument("--pp", type=int, default=1)
    from_hf.add_argument("--vpp", type=int, default=None)
    from_hf.add_argument("--config", help="preset or YAML for the non-model sections of the saved config")

    to_timm = sub.add_parser("to-timm", help="image trunk -> timm NaFlexVit state dict + kwargs")
    to_timm.add_argument("source", help="HF GenLIP folder or megatron checkpoint")
    to_timm.add_argument("out")
    to_timm.add_argument("--embed-proj-type", choices=["conv", "linear"], default="conv")
    to_timm.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])


def run(args: argparse.Namespace) -> int:
    from genlip_megatron.errors import InputError, describe_os_error

    try:
        if args.direction == "to-hf":
            from genlip_megatron.convert.to_hf import export_to_hf

            summary = export_to_hf(args.checkpoint, args.out, dtype=args.dtype, max_shard_bytes=args.max_shard_size,
                                   tokenizer=args.tokenizer, eval_json=args.eval_json,
                                   without_tokenizer=args.without_tokenizer)
        elif args.direction == "from-hf":
            from genlip_megatron.convert.dispatch import import_hf_folder

            summary = import_hf_folder(args.hf_folder, args.out, tp=args.tp, pp=args.pp, vpp=args.vpp,
                                       base_config=args.config)
        else:
            from genlip_megatron.convert.to_timm import export_to_timm

            summary = export_to_timm(args.source, args.out, embed_proj_type=args.embed_proj_type, dtype=args.dtype)
    except InputError as exc:  # ConversionError and CheckpointError among them
        print(f"genlip convert {args.direction}: refused: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"genlip convert {args.direction}: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0
