"""Turn a Config's `launch` section into sbatch scripts (launch/templates/) and per-rank commands.

Templates hold the shell; this module computes every value they need, so the dry run, the tests and
the real submission all read the same numbers. A template placeholder is `{{name}}`; a name without
a value is an error, never a silent blank. Every value goes through launch/quoting.py, quoted for
the spot it lands in (an #SBATCH line or the bash body): a path or name holding spaces, quotes,
`$(...)`, backticks or `#` arrives as that text and is never run.

NOTE: imports neither torch nor megatron: submission runs on login nodes.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from genlip_megatron.checkpoint import run_dir as run_layout
from genlip_megatron.config.schema import Config
from launch.quoting import (
    Shell,
    export,
    lines,
    number,
    render_template,
    sbatch_directive,
    sbatch_value,
    trusted,
    word,
)

# Defaults exported before the ranks start; launch.env overrides any of them (docs/launch.md).
COMMON_ENV = {
    "PYTHONUNBUFFERED": "1",  # rank logs show progress as it happens, not when a buffer fills
}
GPU_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # megatron's TP/SP overlap needs kernels issued in order
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a dead peer aborts the job instead of hanging it
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # frees communication buffers as soon as they are done
    "NCCL_IB_TIMEOUT": "22",  # ~17 s InfiniBand retry window: large fabrics have transient stalls
    "NCCL_DEBUG": "WARN",  # INFO prints per-rank topology: thousands of lines at 1,024 GPUs
    "OMP_NUM_THREADS": "1",  # decoding uses DALI's own threads (data.num_threads)
}


def absolute(path: str, base: str) -> str:
    return path if not path or os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


@dataclass(frozen=True)
class JobLayout:
    """Where ranks run: `nodes` x `ranks_per_node` ranks, one srun task per node or per rank."""

    nodes: int
    ranks_per_node: int
    launcher: str  # "torchrun" | "srun"

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def tasks_per_node(self) -> int:
        return 1 if self.launcher == "torchrun" else self.ranks_per_node

    def rank(self, node: int, local: int) -> int:
        # torchrun's static rendezvous and srun's block distribution both number ranks node-major.
        return node * self.ranks_per_node + local


def layout_of(cfg: Config) -> JobLayout:
    return JobLayout(cfg.launch.nodes, cfg.launch.gpus_per_node, cfg.launch.launcher)


def _dataset(path: str) -> str:
    """A dataset's canonical name, its manifest.json (a shard folder names the same dataset); a
    name that does not resolve stays as given, for checks.py to report."""
    from genlip_megatron.data.dataset_ref import DatasetRefError, manifest_file

    try:
        return manifest_file(path) if path else path
    except DatasetRefError:
        return path


def resolve_paths(cfg: Config, submit_dir: str) -> None:
    """Make every path the job reads absolute (it may start in another folder, or a container)."""
    cfg.checkpoint.dir = absolute(cfg.checkpoint.dir, submit_dir)
    cfg.checkpoint.load = absolute(cfg.checkpoint.load, submit_dir)
    cfg.data.manifest = _dataset(absolute(cfg.data.manifest, submit_dir))
    cfg.data.eval_manifest = _dataset(absolute(cfg.data.eval_manifest, submit_dir))
    cfg.logging.tensorboard_dir = absolute(cfg.logging.tensorboard_dir, submit_dir)
    cfg.launch.venv = absolute(cfg.launch.venv, submit_dir)
    cfg.launch.log_dir = absolute(cfg.launch.log_dir or run_layout.slurm_dir(cfg.checkpoint.dir),
                                  submit_dir)


def environment(cfg: Config) -> dict[str, str]:
    env = dict(COMMON_ENV)
    if cfg.train.device == "cuda":
        env.update(GPU_ENV)
    else:  # CPU ranks: each gets its share of the cores for torch's intra-op threads
        env["OMP_NUM_THREADS"] = str(cfg.launch.cpus_per_rank)
    for item in cfg.launch.env:  # checks.py has verified KEY=VALUE
        key, _, value = item.partition("=")
        env[key.strip()] = value
    return env


def _mounts(cfg: Config, submit_dir: str) -> str:
    """The user's mounts plus every folder the job touches, each mounted at the same path."""
    wanted = [submit_dir, cfg.checkpoint.dir, cfg.launch.log_dir]
    wanted += [os.path.dirname(p) for p in (cfg.data.manifest, cfg.data.eval_manifest, cfg.checkpoint.load) if p]
    mounts = list(cfg.launch.container_mounts)
    targets = [m.split(":")[1] if ":" in m else m for m in mounts]
    for folder in wanted:
        if not any(folder == t or folder.startswith(t.rstrip("/") + "/") for t in targets):
            mounts.append(f"{folder}:{folder}")
            targets.append(folder)
    return ",".join(mounts)


def srun_options(cfg: Config, submit_dir: str, node_logs: bool) -> Shell:
    """srun options of the job step; node_logs: one output file per node in "$JOB_DIR"."""
    opts = []
    if node_logs:
        layout = layout_of(cfg)
        opts += [f"--ntasks-per-node={number(layout.tasks_per_node)}", "--kill-on-bad-exit=1",
                 '--output="$JOB_DIR"/node-%n.log']
    if cfg.launch.container_image:
        opts += [f"--container-image={word(cfg.launch.container_image, 'launch.container_image')}",
                 f"--container-mounts={word(_mounts(cfg, submit_dir), 'launch.container_mounts')}",
                 f"--container-workdir={word(submit_dir, 'the working folder')}"]
    return trusted(" ".join(opts))


def _optional_sbatch(cfg: Config, gpus_per_node: int | None, dependency: str | None) -> Shell:
    launch = cfg.launch
    found = [sbatch_directive(f"--{key}", value, f"launch.{key}") for key, value in
             (("partition", launch.partition), ("account", launch.account), ("qos", launch.qos)) if value]
    if dependency:
        found.append(sbatch_directive("--dependency", dependency, "--dependency"))
    if gpus_per_node:
        found.append(trusted(f"#SBATCH --gpus-per-node={number(gpus_per_node)}"))
    found += [sbatch_directive(arg, what="launch.sbatch_args") for arg in launch.sbatch_args]
    return lines(found)


def _setup(cfg: Config) -> Shell:
    found = [trusted(cfg.launch.setup)] if cfg.launch.setup else []  # shell by design (docs/launch.md)
    if cfg.launch.venv:
        found.append(trusted(f"source {word(os.path.join(cfg.launch.venv, 'bin', 'activate'), 'launch.venv')}"))
    return lines(found) if found else trusted("# (no launch.setup, venv or container: python from this job's PATH)")


def _exports(env: dict[str, str]) -> Shell:
    return lines(export(key, value) for key, value in env.items())


def train_script(cfg: Config, config_path: str, submit_dir: str, dependency: str | None = None,
                 header: str = "GenLIP training job") -> str:
    """The training job's sbatch script. `cfg` must have gone through resolve_paths."""
    launch, layout = cfg.launch, layout_of(cfg)
    gpus = launch.gpus_per_node if cfg.train.device == "cuda" else None
    port = number(launch.master_port) if launch.master_port else trusted("$((20000 + SLURM_JOB_ID % 20000))")
    return render_template("train.sbatch", {
        "header": trusted(header), "job_name": sbatch_value(launch.job_name, "launch.job_name"),
        "nodes": number(launch.nodes), "tasks_per_node": number(layout.tasks_per_node),
        "cpus_per_task": number(launch.cpus_per_rank * (layout.ranks_per_node // layout.tasks_per_node)),
        "time": sbatch_value(launch.time, "launch.time"),
        "output": sbatch_value(os.path.join(launch.log_dir, "%x-%j.out"), "launch.log_dir"),
        "submit_dir": sbatch_value(submit_dir, "the working folder"),
        "signal_lead_s": number(launch.signal_lead_s),
        "optional_sbatch": _optional_sbatch(cfg, gpus, dependency),
        "log_dir": word(launch.log_dir, "launch.log_dir"),
        "checkpoint_dir": word(cfg.checkpoint.dir, "checkpoint.dir"), "master_port": port,
        "env_exports": _exports(environment(cfg)), "setup": _setup(cfg),
        "gpus_per_node": number(launch.gpus_per_node),
        "srun_options": srun_options(cfg, submit_dir, node_logs=True),
        "entry": trusted("node.sh" if launch.launcher == "torchrun" else "rank.sh"),
        "train_args": word(config_path, "the frozen config path"), "max_requeues": number(launch.max_requeues),
    })


def rank_commands(cfg: Config, config_path: str) -> list[str]:
    """What runs where, one line per torchrun (per node) and one per rank, for --dry-run.

    Host names are known only inside the allocation, so nodes are named by their index; node 0 is
    the first host of SLURM_JOB_NODELIST and carries MASTER_ADDR.
    """
    layout, log_dir = layout_of(cfg), cfg.launch.log_dir
    train = f"python -m genlip_megatron.cli train {shlex.quote(config_path)}"
    lines = [f"# world size {layout.world_size} = {layout.nodes} nodes x {layout.ranks_per_node} ranks; "
             f"launcher {layout.launcher}; rendezvous MASTER_ADDR = node 0 (first host of the allocation)"]
    if layout.launcher == "torchrun":
        for node in range(layout.nodes):
            lines.append(f"node {node}: torchrun --nnodes={layout.nodes} --nproc-per-node="
                         f"{layout.ranks_per_node} --node-rank={node} --master-addr=$MASTER_ADDR "
                         f"--master-port=$MASTER_PORT --max-restarts=0 --no-python bash rank.sh")
    for node in range(layout.nodes):
        for local in range(layout.ranks_per_node):
            rank = layout.rank(node, local)
            ids = (f"RANK={rank} LOCAL_RANK={local} WORLD_SIZE={layout.world_size}"
                   if layout.launcher == "torchrun" else
                   f"SLURM_PROCID={rank} SLURM_LOCALID={local} SLURM_NTASKS={layout.world_size}")
            log = f"{log_dir}/$SLURM_JOB_ID/rank-{rank:05d}.log"
            lines.append(f"rank {rank}: node {node} local {local}: {ids} MASTER_ADDR=<node 0> {train} >> {log}")
    return lines


def shards_scripts(cfg: Config, submit_dir: str, num_tasks: int, build_args: list[str], out_dir: str,
                   dependency: str | None = None, max_parallel: int = 0) -> tuple[str, str]:
    """(array script building `num_tasks` slices, merge script to run after all of them)."""
    launch = cfg.launch
    common = {
        "job_name": sbatch_value(launch.job_name, "launch.job_name"),
        "submit_dir": sbatch_value(submit_dir, "the working folder"),
        "env_exports": _exports(environment(cfg)),
        "setup": _setup(cfg), "srun_options": srun_options(cfg, submit_dir, node_logs=False),
    }
    array = render_template("shards_array.sbatch", {
        **common, "header": trusted("GenLIP shard build (array)"),
        "array": sbatch_value(f"0-{num_tasks - 1}" + (f"%{max_parallel}" if max_parallel else ""), "--shards"),
        "output": sbatch_value(os.path.join(launch.log_dir, "%x-%A_%a.out"), "launch.log_dir"),
        "num_tasks": number(num_tasks), "cpus_per_task": number(launch.cpus_per_rank),
        "time": sbatch_value(launch.time, "launch.time"),
        "optional_sbatch": _optional_sbatch(cfg, None, dependency),
        "build_args": trusted(" ".join(word(a, "--shards-args") for a in build_args)),
    })
    merge = render_template("shards_merge.sbatch", {
        **common, "header": trusted("GenLIP shard merge"),
        "job_name": sbatch_value(f"{launch.job_name}-merge", "launch.job_name"),
        "output": sbatch_value(os.path.join(launch.log_dir, "%x-%j.out"), "launch.log_dir"),
        "out_dir": word(out_dir, "--out"), "optional_sbatch": _optional_sbatch(cfg, None, None),
    })
    return array, merge
