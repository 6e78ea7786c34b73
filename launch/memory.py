"""The planner's view of memory: a parallel layout, and per-GPU memory and parameters of a config
under it, as the config's objective counts them (ObjectiveSpec.plan_memory / plan_params; GenLIP:
objectives/genlip/planner.py, AIMv2: objectives/aimv2/planner.py, shared storage rules:
objectives/planning.py). Imports neither torch nor megatron.
"""

from __future__ import annotations

from dataclasses import dataclass

from genlip_megatron.config.schema import Config
from genlip_megatron.objectives import registry

GIB = 1024**3
DEFAULT_TEXT_TOKENS = 84  # stage 1: 8.4M tokens / ~30k samples per step = ~280 per sample, 196 image


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    cp: int = 1
    dp: int = 1
    micro_batch_size: int = 1
    recompute: str = "none"  # "none" | "selective" | "full"
    sequence_parallel: bool = False

    def describe(self) -> str:
        vpp = f" VPP{self.vpp}" if self.vpp else ""
        sp = "+SP" if self.sequence_parallel else ""
        return (f"TP{self.tp}{sp} PP{self.pp}{vpp} CP{self.cp} DP{self.dp} mbs{self.micro_batch_size} "
                f"recompute={self.recompute}")

    def overrides(self) -> list[str]:
        """The config overrides that select this layout (DP follows from the world size)."""
        return [f"parallel.tensor_model_parallel_size={self.tp}",
                f"parallel.pipeline_model_parallel_size={self.pp}",
                f"parallel.virtual_pipeline_model_parallel_size={self.vpp if self.vpp else 'null'}",
                f"parallel.context_parallel_size={self.cp}",
                f"parallel.sequence_parallel={'true' if self.sequence_parallel else 'false'}",
                f"train.micro_batch_size={self.micro_batch_size}", f"model.recompute={self.recompute}"]


def total_params(cfg: Config, tp: int = 1) -> int:
    """Parameters of the config's model (vocabulary padded for `tp`)."""
    return registry.spec_for(cfg).plan_params(cfg, tp)


def memory_breakdown(cfg: Config, layout: Layout, micro_batches: int, text_tokens: float,
                     overhead_bytes: float = 0.0) -> dict[str, float]:
    """Bytes on the most loaded rank of `layout`, by component, plus `overhead_bytes` (CUDA context,
    NCCL, workspaces) when given. `text_tokens`: mean text tokens per sample (the heads run on the
    loss positions only, model/lm_head.py)."""
    stage = dict(registry.spec_for(cfg).plan_memory(cfg, layout, micro_batches, text_tokens))
    if overhead_bytes:
        stage["overhead"] = overhead_bytes
    return stage
