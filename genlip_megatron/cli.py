"""The `genlip` command: pick a subcommand, let its module parse the rest, run it.

Each subcommand lives in `genlip_megatron/commands/<name>.py` (or another module named below) and
exposes `add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
subcommand runs, so `genlip --help` stays fast and a command never pays for another's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from genlip_megatron.errors import InputError, describe_os_error

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("genlip_megatron.commands.config", "print or validate a resolved config"),
    "shards": ("genlip_megatron.commands.shards", "build, merge, inspect and verify caption shards"),
    "tokenizer": ("genlip_megatron.commands.tokenizer", "train or inspect a tokenizer"),
    "train": ("genlip_megatron.commands.train", "train GenLIP / AIMv2 (under torchrun or SLURM)"),
    "eval": ("genlip_megatron.commands.eval", "evaluate a checkpoint"),
    "caption": ("genlip_megatron.commands.caption", "greedy-caption an image with a checkpoint"),
    "demo": ("genlip_megatron.commands.demo", "build the embedded dataset, train, evaluate, report"),
    "convert": ("genlip_megatron.commands.convert", "convert checkpoints to and from Hugging Face"),
    "submit": ("launch.submit", "render and submit a SLURM job"),
    "launch": ("launch.local", "launch a local multi-process run through torchrun"),
    "plan": ("launch.plan", "plan parallel layouts and memory for a config"),
}


class ArgumentParser(argparse.ArgumentParser):
    """Options and positionals in any order: `genlip train CONFIG k=v --opt` and `CONFIG --opt k=v`
    parse alike (argparse alone ends a `nargs="*"` positional at the first option). Subcommand
    parsers (`convert to-hf`, `shards build`) are made of this class too."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back into parse_known_args
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is not None:
                found[name] = (module, text)
        except ModuleNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        parser = argparse.ArgumentParser(prog="genlip", description=__doc__.splitlines()[0])
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, (_, text) in commands.items():
            sub.add_parser(name, help=text)
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(commands[name][0])
    parser = ArgumentParser(prog=f"genlip {name}", description=commands[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except InputError as exc:  # bad input: the message names what to fix; a traceback would not help
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"genlip {name}: error: {line}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, read-only or missing folder: the system's reason and the path
        print(f"genlip {name}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
