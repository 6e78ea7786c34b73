"""Reasons not to submit: every problem a job would otherwise hit after waiting in the queue.

`submission_problems` returns one line per problem (empty: fine to submit). It runs before sbatch,
on the login node, so a typo costs seconds instead of a queue wait plus a crashed allocation. The
config's own cross-field checks (validate.py) run here too, with the world size of the allocation.
"""

from __future__ import annotations

import copy
import os
import re

from genlip_megatron.config.load import ConfigError
from genlip_megatron.config.schema import Config
from genlip_megatron.config.validate import validate
from genlip_megatron.data.dataset_ref import checked_vocab_size, dataset_tokenizer_file
from genlip_megatron.data.tokenizer import Tokenizer
from genlip_megatron.training.resume_policy import resume_problems
from genlip_megatron.training.run_inputs import resolve_run_inputs

# sbatch --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds of an sbatch --time value, or None when it is not one."""
    match = _TIME.match(text.strip())
    if not match:
        return None
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def _launch_problems(cfg: Config) -> list[str]:
    """Relations between launch keys; each key's own range and form is validate()'s (config/ranges.py)."""
    launch, out = cfg.launch, []
    if launch.container_image and launch.venv:
        out.append("launch.container_image and launch.venv are both set: the container brings its own "
                   "python; set only one")
    if launch.venv and not os.path.isfile(os.path.join(launch.venv, "bin", "activate")):
        out.append(f"launch.venv={launch.venv}: no bin/activate there (not a virtual environment)")
    seconds = slurm_time_seconds(launch.time)
    if seconds is not None and not 0 < launch.signal_lead_s < seconds:
        out.append(f"launch.signal_lead_s={launch.signal_lead_s} must be positive and shorter than "
                   f"launch.time={launch.time} ({seconds} s), or the checkpoint signal never comes in time")
    return out


def _dataset_problems(cfg: Config, key: str, ref: str) -> list[str]:
    """A dataset (shard folder or its manifest.json) that exists and whose tokenizer fits the model."""
    try:
        tokenizer = Tokenizer.from_file(dataset_tokenizer_file(ref))
        if key == "data.manifest":
            checked_vocab_size(cfg.model.vocab_size, tokenizer)
    except ValueError as exc:  # DatasetRefError, or a tokenizer.json that does not load
        return [f"{key}: {exc}"]
    return []


def _resume_problems(cfg: Config) -> list[str]:
    """A resubmission whose config differs from its checkpoint's, or whose run is complete, is refused
    here rather than after the queue wait (training/resume_policy.py says what may change)."""
    resolved = copy.deepcopy(cfg)
    try:
        resolve_run_inputs(resolved)  # the checkpoint saved the resolved config: compare like with like
    except ConfigError:
        return []  # the dataset checks report why
    return resume_problems(resolved)


def _path_problems(cfg: Config) -> list[str]:
    out = []
    if not cfg.checkpoint.dir:
        out.append("checkpoint.dir is empty: a SLURM run needs a run folder to checkpoint into and "
                   "resume from after a requeue")
    if not cfg.train.synthetic_data:
        if not cfg.data.manifest:
            out.append("data.manifest is empty: build shards first (genlip shards build) or set "
                       "train.synthetic_data=true")
        else:
            out += _dataset_problems(cfg, "data.manifest", cfg.data.manifest)
    if cfg.data.eval_manifest:
        out += _dataset_problems(cfg, "data.eval_manifest", cfg.data.eval_manifest)
    if cfg.checkpoint.load and not os.path.exists(cfg.checkpoint.load):
        out.append(f"checkpoint.load={cfg.checkpoint.load}: no such checkpoint")
    elif not out:
        out += _resume_problems(cfg)
    return out


def submission_problems(cfg: Config, training: bool = True) -> list[str]:
    """Every reason not to submit `cfg`; paths must already be absolute (render.resolve_paths).

    `training=False` (a shard-build array) skips the checks that only a training job needs.
    """
    out = _launch_problems(cfg)
    if not training:
        return out
    out += _path_problems(cfg)
    p, launch = cfg.parallel, cfg.launch
    model_parallel = (p.tensor_model_parallel_size * p.pipeline_model_parallel_size
                      * p.context_parallel_size)
    world = launch.nodes * launch.gpus_per_node
    unit = "GPUs" if cfg.train.device == "cuda" else "ranks"
    world_ok = world > 0 and model_parallel > 0 and world % model_parallel == 0
    if world > 0 and model_parallel > 0 and not world_ok:
        out.append(f"launch: {world} {unit} (launch.nodes={launch.nodes} x launch.gpus_per_node="
                   f"{launch.gpus_per_node}) are not divisible by TP x PP x CP = "
                   f"{p.tensor_model_parallel_size} x {p.pipeline_model_parallel_size} x "
                   f"{p.context_parallel_size} = {model_parallel}")
    # The world-size checks of validate() would repeat the line above when the layout does not fit.
    return out + validate(cfg, world if world_ok else None)
