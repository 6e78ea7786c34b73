"""Process groups: torch.distributed, megatron-core's model-parallel groups and RNG streams.

Everything is passed in as plain arguments; launch code translates torchrun/SLURM variables into
them (this module never reads the environment). `reset_model_parallel` re-lays a live process group
out as another TP/PP/VPP/CP grid without restarting processes (the test pools rely on it).
"""

from __future__ import annotations

import datetime
import random

import numpy as np
import torch
import torch.distributed as dist

from genlip_megatron.runtime import device as device_lib

_timeout_s = 1800.0  # collective timeout of the live group; megatron's groups get the same


def init_distributed(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    device: str = "cuda",
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    cp: int = 1,
    seed: int = 1234,
    local_rank: int | None = None,
    timeout_s: float = 1800.0,
) -> None:
    """Join the world, build megatron's parallel groups and seed every RNG stream.

    On CPU the megatron-core adaptations are applied first (before any model is built).
    `local_rank` picks the GPU on CUDA (default: rank modulo the GPUs on this node).
    """
    device_lib.validate_device(device)
    if device == "cpu":
        from genlip_megatron.runtime.cpu_adaptations import apply_cpu_adaptations

        apply_cpu_adaptations()
    if local_rank is None:
        local_rank = rank % torch.cuda.device_count() if device == "cuda" else 0
    device_lib.set_current_device(device, local_rank)
    dist.init_process_group(
        backend=device_lib.backend_for(device),
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    global _timeout_s
    _timeout_s = timeout_s
    _initialize_model_parallel(tp, pp, vpp, cp, seed, timeout_s)


def reset_model_parallel(
    tp: int = 1, pp: int = 1, vpp: int | None = None, cp: int = 1, seed: int = 1234
) -> None:
    """Replace the model-parallel layout inside a live process group; RNG streams are re-seeded.

    Every rank must call it (building groups is collective). The old groups are destroyed so
    repeated resets do not leak gloo connections.
    """
    from megatron.core import parallel_state

    _destroy_megatron_groups()
    parallel_state.destroy_model_parallel()
    _initialize_model_parallel(tp, pp, vpp, cp, seed, _timeout_s)


def destroy_distributed() -> None:
    """Tear down megatron's groups and the default process group (end of a run or a worker)."""
    from megatron.core import parallel_state

    if dist.is_initialized():
        _destroy_megatron_groups()
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed python, numpy, the torch default generator and megatron's tracked streams.

    Megatron's tracker keeps a data-parallel stream (same on all TP ranks), a model-parallel one
    (seed + 2718 + tp_rank: different per TP rank, for TP-sharded dropout/init) and an expert one.
    NOTE: the same seed on every PP stage; callers wanting distinct stage streams offset it.
    """
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def _initialize_model_parallel(
    tp: int, pp: int, vpp: int | None, cp: int, seed: int, timeout_s: float
) -> None:
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=cp,
        distributed_timeout_minutes=max(1, int(timeout_s // 60)),
    )
    seed_everything(seed)


def _destroy_megatron_groups() -> None:
    """Destroy every process group parallel_state holds (destroy_model_parallel only forgets them)."""
    from megatron.core import parallel_state

    seen: dict[int, dist.ProcessGroup] = {}

    def collect(value) -> None:
        if isinstance(value, dist.ProcessGroup):
            seen.setdefault(id(value), value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)

    for name, value in vars(parallel_state).items():
        if name.startswith("_"):  # the module's globals; only ProcessGroups are collected
            collect(value)
    world = dist.group.WORLD
    for group in seen.values():
        if group is not world:
            dist.destroy_process_group(group)
