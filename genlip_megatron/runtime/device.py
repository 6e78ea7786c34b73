"""The run's compute device, chosen once from the config string and asked for everywhere else.

`train.device` is "cuda" (one GPU per rank, NCCL) or "cpu" (gloo; megatron-core then needs the
adaptations in cpu_adaptations.py). Our code asks `current_device()` instead of calling
`torch.cuda.current_device()`, so the same code runs on both.
"""

from __future__ import annotations

import torch

DEVICES = ("cuda", "cpu")
_BACKENDS = {"cuda": "nccl", "cpu": "gloo"}

_current: torch.device | None = None


def validate_device(name: str) -> str:
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU; use device 'cpu'")
    return name


def backend_for(name: str) -> str:
    """The torch.distributed backend for a device name: nccl on GPUs, gloo on CPUs."""
    return _BACKENDS[validate_device(name)]


def set_current_device(name: str, local_rank: int = 0) -> torch.device:
    """Pin this process to its device (GPU `local_rank` on CUDA) and remember it."""
    global _current
    validate_device(name)
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        _current = torch.device("cuda", local_rank)
    else:
        _current = torch.device("cpu")
    return _current


def current_device() -> torch.device:
    """The device this rank computes on; set by `set_current_device` (init_distributed)."""
    if _current is None:
        raise RuntimeError("no device chosen yet: call runtime.distributed.init_distributed first")
    return _current


def is_cpu() -> bool:
    return current_device().type == "cpu"


def peak_memory_bytes() -> int:
    """Peak memory of this rank so far: allocated GPU memory on CUDA, the process's peak resident
    set on CPU (what the OOM killer watches)."""
    if current_device().type == "cuda":
        return int(torch.cuda.max_memory_allocated(current_device()))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
