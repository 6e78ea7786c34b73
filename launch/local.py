"""`genlip launch local --nproc N CONFIG [key=value ...]`: N training ranks on this machine via torchrun.

    genlip launch local --nproc 8 genlip_l16 data.manifest=... checkpoint.dir=runs/l16   # one 8-GPU node
    genlip launch local --nproc 2 tiny_cpu train.synthetic_data=true checkpoint.dir=runs/t  # gloo, CPU

torchrun's standalone rendezvous picks a free port on localhost, so two local runs do not collide.
The config is checked for this world size before any process starts. The exit code is torchrun's:
0 when every rank finished; a rank that stopped on a signal after checkpointing (75) shows as 1,
and rerunning the same command resumes from `latest`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from genlip_megatron.config.load import ConfigError, load_config, preset_names
from genlip_megatron.config.validate import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("where", choices=["local"], help="only 'local' (use `genlip submit` for SLURM)")
    parser.add_argument("--nproc", type=int, required=True, help="ranks (GPUs, or CPU processes)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP threads per rank (default: CPUs / nproc on CPU, 1 on GPU)")
    parser.add_argument("--dry-run", action="store_true", help="print the torchrun command only")
    parser.add_argument("config", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def torchrun_command(nproc: int, config: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "genlip_megatron.cli", "train", config, *overrides]


def threads_per_rank(cpus: int, nproc: int) -> int:
    """CPU threads each of `nproc` ranks gets when they share `cpus` (at least one)."""
    return max(1, cpus // max(nproc, 1))


def rank_environment(threads: int) -> dict:
    """This process's environment for torchrun's ranks: `threads` OpenMP threads each (the config has
    no thread key by design), unbuffered output. torchrun sets each rank's RANK, WORLD_SIZE and
    MASTER_* itself."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print("\n".join(f"genlip launch: {e}" for e in exc.errors), file=sys.stderr)
        return 2
    problems = [] if args.nproc >= 1 else [f"--nproc={args.nproc} must be at least 1"]
    problems += validate(cfg, world_size=max(args.nproc, 1))
    if problems:
        print("\n".join(f"genlip launch: {p}" for p in problems), file=sys.stderr)
        return 2
    cmd = torchrun_command(args.nproc, args.config, args.overrides)
    threads = args.threads or (threads_per_rank(os.cpu_count() or 1, args.nproc) if cfg.train.device == "cpu" else 1)
    env = rank_environment(threads)
    if args.dry_run:
        print(f"OMP_NUM_THREADS={threads} " + shlex.join(cmd))
        return 0
    return subprocess.run(cmd, env=env, check=False).returncode
