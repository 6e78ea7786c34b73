"""`genlip train CONFIG [key=value ...]`: one rank of a training run (under torchrun or SLURM srun).

This is the edge where the launcher's environment becomes plain arguments: rank, world size, local
rank and the rendezvous address are read here (torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT; SLURM: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, plus MASTER_ADDR/MASTER_PORT set by the
job script) and nowhere else. Without either, it runs as a single process on 127.0.0.1.

Exit codes: 0 done, 75 stopped by SIGTERM/SIGUSR1 after saving (requeue), 76 too many non-finite
steps, 77 a step hung (see docs/training.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from genlip_megatron.config.load import ConfigError, load_config, preset_names

DEFAULT_PORT = 29500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. checkpoint.dir=runs/a train.device=cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve (dataset, tokenizer, vocabulary) and validate the config for this "
                             "launch's world size, print it, start nothing")


def launch_environment(env: dict) -> dict:
    """rank, world_size, local_rank, master_addr, master_port from torchrun or SLURM variables.

    A world of one needs no rendezvous: it binds port 0 on 127.0.0.1 (the OS picks a free port), so
    any number of single-process runs share a host, whatever MASTER_PORT says.
    """
    def first(*names, default=None):
        return next((env[n] for n in names if env.get(n) not in (None, "")), default)

    where = {
        "rank": int(first("RANK", "SLURM_PROCID", default=0)),
        "world_size": int(first("WORLD_SIZE", "SLURM_NTASKS", default=1)),
        "local_rank": int(first("LOCAL_RANK", "SLURM_LOCALID", default=0)),
        "master_addr": first("MASTER_ADDR", default="127.0.0.1"),
        "master_port": int(first("MASTER_PORT", default=DEFAULT_PORT)),
    }
    if where["world_size"] == 1:
        where["master_addr"], where["master_port"] = "127.0.0.1", 0
    return where


def _dry_run(cfg, world_size: int) -> int:
    from genlip_megatron.config.load import dump_config
    from genlip_megatron.config.validate import check
    from genlip_megatron.training.resume_policy import resume_problems
    from genlip_megatron.training.run_inputs import resolve_run_inputs

    try:
        check(resolve_run_inputs(cfg), world_size)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = resume_problems(cfg)  # what resuming from checkpoint.dir / checkpoint.load would refuse
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    sys.stdout.write(dump_config(cfg))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    where = launch_environment(dict(os.environ))
    if args.dry_run:
        return _dry_run(cfg, where["world_size"])
    from genlip_megatron.runtime.log_setup import configure_logging

    configure_logging(where["rank"])  # before megatron and transformers are imported: they warn on import
    # Imported late: megatron costs seconds to import, and a config error should not wait for it.
    from genlip_megatron.training.trainer import train

    try:
        return train(cfg, **where)
    except ConfigError as exc:
        if where["rank"] == 0:  # every rank finds the same problem; one copy is enough
            print(exc, file=sys.stderr)
        return 1
