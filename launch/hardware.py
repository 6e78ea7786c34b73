"""The hardware numbers `genlip plan` assumes, stated once so every estimate can be traced to them.

Peaks and capacities are vendor data-sheet values (dense, no sparsity). The efficiencies are our
assumptions, not measurements: change them here (or with `genlip plan --matmul-efficiency`) when a
real step time on the cluster says otherwise; docs/scaling.md records what was used.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: float  # what the driver reports as total
    bf16_tflops: float  # dense tensor-core peak
    nvlink_bytes_s: float  # per GPU, per direction, inside a node
    network_bytes_s: float  # per GPU to other nodes (one NIC per GPU)
    gpus_per_node: int = 8


GPUS = {
    # H100 SXM5 80 GB: nvidia-smi reports 81,559 MiB; NVLink 4 900 GB/s bidirectional; one 400 Gb/s
    # NDR ConnectX-7 per GPU (DGX H100 / most H100 clusters).
    "h100": GPU("H100 SXM 80GB", 81559 * 2**20, 989.4, 450 * GB, 50 * GB),
    # H200 SXM 141 GB: same compute and links as the H100, larger and faster HBM3e.
    "h200": GPU("H200 SXM 141GB", 143771 * 2**20, 989.4, 450 * GB, 50 * GB),
    # A100 SXM4 80 GB: NVLink 3 600 GB/s bidirectional; one 200 Gb/s HDR NIC per GPU.
    "a100": GPU("A100 SXM 80GB", 81920 * 2**20, 312.0, 300 * GB, 25 * GB),
    # B200 (DGX B200, 180 GB usable): NVLink 5 1.8 TB/s bidirectional; 400 Gb/s per GPU.
    "b200": GPU("B200 180GB", 180 * GIB, 2250.0, 900 * GB, 50 * GB),
}


@dataclass(frozen=True)
class Assumptions:
    """Efficiencies and reserves the estimates rest on (see the module docstring)."""

    matmul_efficiency: float = 0.60  # share of the bf16 peak the GEMMs and flash attention reach
    nvlink_efficiency: float = 0.75  # achieved bus bandwidth of NCCL rings inside a node
    network_efficiency: float = 0.80  # achieved bus bandwidth across nodes
    reserved_bytes: float = 4 * GIB  # CUDA context, NCCL buffers, cuBLAS workspaces
    usable_fraction: float = 0.92  # allocator fragmentation: plan to at most this share of memory
    grad_reduce_exposed: float = 0.2  # share of the DP reduce-scatter not hidden behind backward
    param_gather_exposed: float = 1.0  # the DP all-gather before forward (1.0 without overlap)


def precision_peak_tflops(gpu: GPU, precision: str) -> float:
    """FP8 doubles the bf16 tensor-core peak; fp32 runs as TF32 at half of it."""
    return {"bf16": 1.0, "fp8": 2.0, "fp32": 0.5}[precision] * gpu.bf16_tflops
