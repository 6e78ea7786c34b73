"""Save and load training state with megatron-core dist_checkpointing (torch_dist format).

What a checkpoint holds (one folder, run_dir.py has the layout):
    model / model0, model1, ...   sharded model weights, one entry per virtual pipeline chunk
    optimizer                     distributed-optimizer state, `fully_reshardable`: every tensor is
                                  stored in model space, so TP/PP/DP may change on load
    rng_state                     per-rank RNG streams (python, numpy, torch, CUDA, megatron tracker)
    common (rank 0):              iteration, counters, lr-scheduler state, data-source state,
                                  parallel layout, resolved config (also as a YAML file, run_dir.py)

Loading reshards model and optimizer to the current layout. RNG streams are per rank, so they are
restored only when the layout is unchanged; otherwise the run keeps the streams seeded at start-up
(with dropout/drop-path this makes a resharded resume statistically, not bitwise, identical).
"""

from __future__ import annotations

import logging
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from genlip_megatron.checkpoint import run_dir as layout
from genlip_megatron.checkpoint import save_guard
from genlip_megatron.checkpoint.run_dir import CheckpointError
from genlip_megatron.checkpoint.safe_load import load_common
from genlip_megatron.checkpoint.safe_strategies import load_strategies
from genlip_megatron.checkpoint.writer_queue import install_writer_queue
from genlip_megatron.config.load import config_to_dict

log = logging.getLogger(__name__)
# 2: RNG streams stored as tensors and ints (1 pickled numpy arrays; still read for weights only).
FORMAT_VERSION = 2
WEIGHTS_ONLY_FORMATS = (1, 2)


def sharding_metadata() -> dict:
    """Metadata for every sharded_state_dict call: the distributed optimizer stores its state in
    model space. A FRESH dict each time: megatron-core caches the data-parallel group into it in
    place, and a shared dict would carry a stale group into a later, differently laid-out save or
    load (two ranks then both claim the main replica of every replicated tensor)."""
    return {"distrib_optim_sharding_type": "fully_reshardable"}


def parallel_layout() -> dict:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "vpp": parallel_state.get_virtual_pipeline_model_parallel_world_size(),
            "cp": parallel_state.get_context_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size(),
            "world": dist.get_world_size()}


def _rng_state() -> dict:
    """This rank's RNG streams as plain data (tensors, ints, floats): nothing to unpickle on resume."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state = {"random": [version, torch.tensor(internal, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached_gauss)],
             "torch": torch.get_rng_state(),
             "tracker": dict(tensor_parallel.get_cuda_rng_tracker().get_states())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, path: str) -> None:
    try:
        version, internal, gauss = state["random"]
        kind, keys, pos, has_gauss, cached_gauss = state["numpy"]
        random.setstate((version, tuple(internal.tolist()), gauss))
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: rng_state of this rank is malformed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _model_keys(model: list) -> list[str]:
    return ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]


def _sharded_state(modules, is_loading: bool, optimizer: bool, rng: bool) -> dict:
    state = {}
    for key, chunk in zip(_model_keys(modules.model), modules.model):
        # The DDP wrapper would prefix every key with `module.`: take the unwrapped chunk's.
        state[key] = chunk.module.sharded_state_dict(metadata=sharding_metadata())
    if optimizer:
        state["optimizer"] = modules.optimizer.sharded_state_dict(
            dict(state), is_loading=is_loading, metadata=sharding_metadata())
    if rng:
        rank, world = dist.get_rank(), dist.get_world_size()
        state["rng_state"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state


def common_state(cfg, iteration: int, **extra) -> dict:
    """The non-tensor entries every checkpoint carries (rank 0 stores them in common.pt)."""
    return {"format_version": FORMAT_VERSION, "iteration": iteration, "layout": parallel_layout(),
            "config": config_to_dict(cfg), **extra}


def write_checkpoint(path: str, state: dict, cfg, *, async_queue=None, on_complete=None) -> None:
    """Write the checkpoint folder `path`: `state` (sharded tensors and `common_state`) on every rank,
    then, once every rank finished, rank 0 writes the run's config file (run_dir.py) and calls `on_complete`.

    The one writer of checkpoint folders: training saves through it, `genlip convert from-hf` too.
    With `async_queue` (megatron AsyncCallsQueue) the tensor writes run in the background and the
    completion runs when the queue finalises the request on every rank.
    """
    install_writer_queue()  # its server process must not outlive a killed rank
    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()  # dist_checkpointing needs the folder to exist on every rank

    def finish() -> None:
        if dist.get_rank() == 0:
            layout.write_run_config(cfg, path)
            if on_complete is not None:
                on_complete()

    if async_queue is None:
        with save_guard.save_errors(path):  # a full disk or read-only folder: one line, folder removed
            dist_checkpointing.save(state, path)
            dist.barrier()  # every rank's shards are on disk before the folder is declared complete
            finish()
        dist.barrier()  # no rank races ahead (e.g. to exit) before the completion exists
    else:
        request = dist_checkpointing.save(state, path, async_sharded_save=True)
        request.add_finalize_fn(finish)
        async_queue.schedule_async_request(request)


def save_checkpoint(run_dir: str, iteration: int, modules, batch_source, counters: dict, cfg,
                    async_queue=None) -> None:
    """Write iter_<iteration> and, once every rank finished, point `latest` at it and prune.

    counters: plain values restored on resume (iteration, skipped steps, ...).
    """
    path = layout.checkpoint_path(run_dir, iteration)
    if dist.get_rank() == 0 and os.path.exists(path):  # left by a save that never completed
        shutil.rmtree(path)
    try:
        previous = layout.read_latest(run_dir)
    except ValueError:
        previous = None
    needed = save_guard.estimated_bytes(modules.model, parallel_state.get_data_parallel_world_size(), previous)
    save_guard.check_free_space(run_dir, path, needed, next(modules.model[0].parameters()).device)
    state = _sharded_state(modules, is_loading=False, optimizer=True, rng=True)
    state.update(common_state(cfg, iteration, counters=dict(counters), scheduler=modules.scheduler.state_dict(),
                              data=batch_source.state_dict()))

    def mark_complete() -> None:
        layout.write_latest(run_dir, iteration)
        pruned = layout.prune(run_dir, cfg.checkpoint.keep_last)
        log.info("saved checkpoint %s%s", path, f" (pruned {pruned})" if pruned else "")

    write_checkpoint(path, state, cfg, async_queue=async_queue, on_complete=mark_complete)


def _check_common(common: dict, path: str, finetune: bool) -> None:
    """The keys a resume reads, with their types: one line naming the checkpoint otherwise."""
    version = common.get("format_version")
    if version != FORMAT_VERSION and not (finetune and version in WEIGHTS_ONLY_FORMATS):
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this version resumes format "
                              f"{FORMAT_VERSION}" + (" (load it with checkpoint.finetune=true for its weights)"
                                                     if version in WEIGHTS_ONLY_FORMATS else ""))
    wanted = {"layout": dict} if finetune else {
        "layout": dict, "iteration": int, "counters": dict, "scheduler": dict, "data": dict}
    for key, kind in wanted.items():
        if not isinstance(common.get(key), kind) or isinstance(common.get(key), bool):
            raise CheckpointError(f"{path}/common.pt: `{key}` is {type(common.get(key)).__name__}, "
                                  f"expected {kind.__name__}")
    if not finetune and common["iteration"] < 0:
        raise CheckpointError(f"{path}/common.pt: iteration {common['iteration']} is negative")


def load_checkpoint(path: str, modules, batch_source, finetune: bool = False) -> dict:
    """Restore from checkpoint folder `path` into the current layout; return its counters.

    finetune: weights only (no optimizer, scheduler, data or RNG state; counters start at zero).
    Every file is read through checkpoint/safe_load.py: a crafted folder is refused, never executed.
    """
    strategies = load_strategies(path)
    common = load_common(path)
    _check_common(common, path, finetune)
    same_layout = common["layout"] == parallel_layout()
    if not same_layout and not finetune and dist.get_rank() == 0:
        log.warning("resharding %s from layout %s to %s: RNG streams are re-seeded, not restored",
                    path, common["layout"], parallel_layout())
    state = _sharded_state(modules, is_loading=True, optimizer=not finetune, rng=same_layout and not finetune)
    loaded = dist_checkpointing.load(state, path, **strategies)
    for key, chunk in zip(_model_keys(modules.model), modules.model):
        chunk.module.load_state_dict(loaded[key])
    if finetune:
        modules.optimizer.reload_model_params()  # main (fp32) params from the loaded weights
        return {}
    modules.optimizer.load_state_dict(loaded["optimizer"])
    modules.scheduler.load_state_dict(common["scheduler"])
    batch_source.load_state_dict(common["data"])
    if same_layout:
        _set_rng_state(loaded["rng_state"], path)
    return {"iteration": common["iteration"], **common["counters"]}
