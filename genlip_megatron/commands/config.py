"""`genlip config PRESET_OR_YAML [key=value ...] [--world-size N]`: print and validate a config.

Prints the fully resolved config as YAML on stdout (save it, edit it, pass it back: it round-trips),
then validates it. Problems go to stderr, one line each, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys

from genlip_megatron.config.load import ConfigError, dump_config, load_config, preset_names
from genlip_megatron.config.validate import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. model.num_layers=4 model.mrope_section=[2,3,3]")
    parser.add_argument("--world-size", type=int, default=None,
                        help="number of processes; enables the layout and batch-split checks")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(dump_config(cfg))
    problems = validate(cfg, args.world_size)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0
