"""MFU: achieved model FLOP/s per GPU against the dense BF16 peak of the detected GPU.

Each objective counts its own model FLOPs (ObjectiveSpec.train_flops); the trainer sums them per step
and divides here. No MFU is claimed on CPU (no meaningful peak), under FP8 (another peak) or on a
GPU missing from the table.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) BF16 tensor-core peaks, TFLOP/s, from the vendors' data sheets. Matched as
# substrings of torch.cuda.get_device_name(), most specific first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense BF16 peak of a GPU by its name, or None when it is not in the table."""
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment in device_name:
            return peak
    return None


def mfu_peak_tflops(device: str, precision: str) -> float | None:
    """The peak MFU is measured against, or None when MFU is not claimed.

    No MFU on CPU (no meaningful peak) and none under FP8: FP8 matmuls run against a different peak,
    and quoting BF16-based MFU for them would overstate utilisation.
    """
    if device != "cuda" or precision == "fp8" or not torch.cuda.is_available():
        return None
    return bf16_peak_tflops(torch.cuda.get_device_name())
