"""`genlip submit CONFIG [key=value ...]`: render the SLURM job for a config and submit it.

    genlip submit genlip_g16 data.manifest=... checkpoint.dir=runs/g16 launch.nodes=128 --dry-run
    genlip submit my_site.yaml launch.time=04:00:00 --chain 3          # three jobs, each after the last
    genlip submit tiny_cpu --shards 64 --shards-args "in/*.tar --out shards --tokenizer tok.json"

Every check runs before sbatch (launch/checks.py): a bad submission fails in a second with one line
per reason and exit code 2. The resolved config is frozen next to the script, so a requeued job
trains exactly what was submitted even if the YAML changes meanwhile. `--dry-run` prints the script
and the per-rank command lines and submits nothing (no sbatch needed). See docs/launch.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from genlip_megatron.checkpoint import run_dir as run_layout
from genlip_megatron.config.load import ConfigError, load_config, preset_names, save_config
from launch import checks, render
from launch.quoting import QuotingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. launch.nodes=16 launch.partition=gpu")
    parser.add_argument("--dry-run", action="store_true", help="print the script and rank commands only")
    parser.add_argument("--dependency", help="sbatch --dependency of the (first) job, e.g. afterok:123")
    parser.add_argument("--chain", type=int, default=1,
                        help="submit N jobs, each starting after the previous ends (afterany)")
    parser.add_argument("--shards", type=int, metavar="N",
                        help="instead of training: an N-task array of `genlip shards build` + a merge job")
    parser.add_argument("--shards-args", default="", help="arguments of `genlip shards build` (quoted)")
    parser.add_argument("--max-parallel", type=int, default=0, help="array tasks running at once (0: any)")


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"genlip submit: {line}", file=sys.stderr)
    return 2


def _sbatch(path: str, dependency: str | None = None) -> str:
    """Submit and return the job id (sbatch --parsable prints 'id' or 'id;cluster')."""
    cmd = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else []) + [path]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


# sbatch --dependency: TYPE[:JOBID...] joined by "," (all) or "?" (any), e.g. afterok:123,afterany:124
_DEPENDENCY = re.compile(r"[a-z]+(:[0-9_+]+)*([,?][a-z]+(:[0-9_+]+)*)*")


def _stem(log_dir: str, job_name: str) -> str:
    """<log_dir>/<job_name>-<time>: the job's files, always directly inside log_dir."""
    stem = os.path.join(log_dir, f"{job_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.dirname(os.path.normpath(stem)) != os.path.normpath(log_dir):
        raise QuotingError(f"launch.job_name={job_name!r} would put the job's files outside {log_dir}")
    return stem


def _submit_training(cfg, args, submit_dir: str) -> int:
    launch = cfg.launch
    stem = _stem(launch.log_dir, launch.job_name)
    config_path = stem + ".yaml"
    script = render.train_script(cfg, config_path, submit_dir, args.dependency)
    if args.dry_run:
        print(script)
        print("# ---- per-rank commands (config frozen to " + config_path + ") ----")
        print("\n".join(render.rank_commands(cfg, config_path)))
        return 0
    os.makedirs(launch.log_dir, exist_ok=True)
    save_config(cfg, config_path)
    script_path = _write(stem + ".sbatch", script)
    job_ids = [_sbatch(script_path)]
    for _ in range(args.chain - 1):  # each link resumes from the previous link's `latest`
        job_ids.append(_sbatch(script_path, f"afterany:{job_ids[-1]}"))
    for job_id in job_ids:
        print(f"submitted job {job_id}: {launch.log_dir}/{launch.job_name}-{job_id}.out, "
              f"rank logs {launch.log_dir}/{job_id}/rank-*.log")
    return 0


def _out_dir(build_args: list[str]) -> str | None:
    for i, arg in enumerate(build_args):
        if arg == "--out" and i + 1 < len(build_args):
            return build_args[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def _submit_shards(cfg, args, submit_dir: str) -> int:
    build_args = shlex.split(args.shards_args)
    out_dir = _out_dir(build_args)
    problems = [] if args.shards >= 1 else [f"--shards={args.shards} must be at least 1"]
    if out_dir is None:
        problems.append("--shards-args needs --out DIR (the shard folder the array tasks share)")
    if "--task-index" in build_args or "--num-tasks" in build_args:
        problems.append("--shards-args must not set --task-index/--num-tasks: the array sets them")
    if problems:
        return _fail(problems)
    if not cfg.launch.log_dir or cfg.launch.log_dir == run_layout.slurm_dir(cfg.checkpoint.dir):
        cfg.launch.log_dir = run_layout.slurm_dir(render.absolute(out_dir, submit_dir))
    array, merge = render.shards_scripts(cfg, submit_dir, args.shards, build_args, out_dir,
                                         args.dependency, args.max_parallel)
    if args.dry_run:
        print(array)
        print("# ---- merge job (afterok: the array) ----")
        print(merge)
        return 0
    stem = _stem(cfg.launch.log_dir, cfg.launch.job_name)
    os.makedirs(cfg.launch.log_dir, exist_ok=True)
    array_id = _sbatch(_write(stem + "-array.sbatch", array))
    merge_id = _sbatch(_write(stem + "-merge.sbatch", merge), f"afterok:{array_id}")
    print(f"submitted array job {array_id} ({args.shards} tasks) and merge job {merge_id}; "
          f"logs in {cfg.launch.log_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return _fail(exc.errors)
    if args.chain < 1:
        return _fail([f"--chain={args.chain} must be at least 1"])
    if args.dependency is not None and not _DEPENDENCY.fullmatch(args.dependency):
        return _fail([f"--dependency={args.dependency!r} is not an sbatch dependency (e.g. afterok:123)"])
    submit_dir = os.getcwd()
    render.resolve_paths(cfg, submit_dir)
    problems = checks.submission_problems(cfg, training=args.shards is None)
    if problems:
        return _fail(problems)
    if not args.dry_run and shutil.which("sbatch") is None:
        return _fail(["sbatch is not on PATH (not a SLURM login node?); --dry-run shows the script"])
    try:
        if args.shards is not None:
            return _submit_shards(cfg, args, submit_dir)
        return _submit_training(cfg, args, submit_dir)
    except (RuntimeError, QuotingError) as exc:
        return _fail([str(exc)])
