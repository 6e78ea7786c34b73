"""What every check is told: the device, the size profile, and what this machine can run."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CheckContext:
    """device: "cuda" or "cpu". profile: "gpu" (the real sizes) or "smoke" (tiny sizes, for CI on CPU).
    jpeg_dir: optional folder of JPEG photos for the decoding check. work_dir: scratch space."""

    device: str
    profile: str
    jpeg_dir: str | None
    work_dir: str

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")

    @property
    def has_te(self) -> bool:
        return importlib.util.find_spec("transformer_engine") is not None

    @property
    def fp8_capable(self) -> bool:
        """FP8 tensor cores: compute capability 8.9 (Ada) or 9.0+ (Hopper, Blackwell)."""
        return self.cuda and torch.cuda.get_device_capability() >= (8, 9)

    def sizes(self, gpu, smoke):
        return gpu if self.profile == "gpu" else smoke


def skipped(reason: str, **extra) -> dict:
    return {"status": "skipped", "reason": reason, **extra}


def verdict(ok: bool, **numbers) -> dict:
    return {"status": "pass" if ok else "fail", **numbers}


def needs_gpu(ctx: CheckContext, *, te: bool = False, fp8: bool = False) -> dict | None:
    """The skip record when this machine cannot run a GPU-only check, else None."""
    if not ctx.cuda:
        return skipped("no GPU: train.device=cpu (this check runs only on CUDA)")
    if te and not ctx.has_te:
        return skipped("Transformer Engine is not installed")
    if fp8 and not ctx.fp8_capable:
        return skipped(f"FP8 needs compute capability >= 8.9, this GPU has "
                       f"{'.'.join(map(str, torch.cuda.get_device_capability()))}")
    return None
