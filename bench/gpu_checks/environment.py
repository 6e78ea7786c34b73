"""What the machine runs: versions of torch, CUDA, megatron-core, Transformer Engine, DALI, apex,
the GPU, and whether torch's varlen attention API is the one the fused path calls."""

from __future__ import annotations

import importlib.metadata

import torch

from genlip_megatron.model.varlen_attention import VARLEN_MIN_TORCH, varlen_api_problem


def _version(package: str) -> str | None:
    for name in (package, package.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check(ctx) -> dict:
    facts = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "megatron_core": _version("megatron-core"), "transformer_engine": _version("transformer-engine"),
        "nvidia_dali": _version("nvidia-dali-cuda130") or _version("nvidia-dali-cuda120")
        or _version("nvidia-dali-cuda110"),
        "apex": _version("apex"), "varlen_min_torch": VARLEN_MIN_TORCH,
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        facts.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                     gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
    problem = varlen_api_problem() if ctx.cuda else None
    # On CPU the fused path does not call varlen_attn; the API is still reported.
    facts["varlen_api"] = varlen_api_problem() or "ok"
    return {"status": "fail" if problem else "pass", **({"reason": problem} if problem else {}), **facts}
