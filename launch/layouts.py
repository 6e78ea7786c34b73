"""Enumerate TP/PP/VPP/CP/DP layouts for a GPU count, estimate each one's step time, rank them.

A layout is rejected, with its reason, when the config's own checks refuse it (validate.py: heads
not divisible by TP, layers by PP x VPP, the global batch by micro-batch x DP, CP without TE...),
when TP leaves a node's NVLink domain, or when its memory estimate (the objective's, through memory.py)
exceeds the GPU's usable memory. The rest are ranked by estimated step time.

Step time (hardware.py states every number it uses):
    compute   model FLOPs x (4/3 under full recompute) / GPUs / (peak x matmul efficiency), stretched
              by the objective's pipeline-stage imbalance (AIMv2's encoder | decoder stages differ)
    bubble    compute x (p - 1) / (m v)                       (1F1B; v = VPP chunks, m micro-batches)
    TP        4 collectives per layer and micro-batch (6 with full recompute), each moving
              2 (t-1)/t x tokens x width x bytes of that layer, over NVLink; not overlapped
    PP        one activation send forward and one gradient send back per micro-batch and stage
    DP        reduce-scatter of fp32 grads + all-gather of params, (d-1)/d x local bytes each, over the
              network (NVLink when the DP group fits in a node); partly hidden (see Assumptions)
MFU = model FLOPs / (GPUs x step time x peak): recompute costs time but does not count as work.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from genlip_megatron.config.schema import Config
from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.config.validate import validate
from genlip_megatron.objectives import registry
from genlip_megatron.objectives.planning import element_bytes
from launch.hardware import GPU, Assumptions, precision_peak_tflops
from launch.memory import Layout, memory_breakdown, total_params

TP_SIZES, CP_SIZES, VPP_SIZES = (1, 2, 4, 8), (1, 2, 4, 8), (2, 3, 4, 5, 8, 10)
RECOMPUTE = ("none", "selective", "full")


def step_flops(cfg: Config, text_tokens: float) -> float:
    """Model FLOPs of one optimizer step over the global batch (the objective's count)."""
    return registry.spec_for(cfg).plan_flops(cfg, text_tokens)


@dataclass
class Estimate:
    layout: Layout
    micro_batches: int
    memory: dict[str, float]
    seconds: dict[str, float]
    mfu: float

    @property
    def memory_total(self) -> float:
        return sum(self.memory.values())

    @property
    def step_seconds(self) -> float:
        return sum(self.seconds.values())


def _bandwidth(group_gpus: int, gpu: GPU, a: Assumptions) -> float:
    inside = group_gpus <= gpu.gpus_per_node
    return gpu.nvlink_bytes_s * a.nvlink_efficiency if inside else gpu.network_bytes_s * a.network_efficiency


def estimate(cfg: Config, layout: Layout, gpus: int, gpu: GPU, a: Assumptions, text_tokens: int) -> Estimate:
    t, p, c, d = layout.tp, layout.pp, layout.cp, layout.dp
    e = element_bytes(cfg)
    m = StepSplit(cfg.train.global_batch_size, layout.micro_batch_size, d).micro_batches
    flops = step_flops(cfg, text_tokens)
    peak = precision_peak_tflops(gpu, cfg.train.precision) * 1e12
    spec = registry.spec_for(cfg)
    compute = flops * (4 / 3 if layout.recompute == "full" else 1) / gpus / (peak * a.matmul_efficiency)
    compute *= spec.plan_stage_imbalance(cfg, layout, text_tokens)  # the slowest pipeline stage sets the pace
    seconds = {"compute": compute, "bubble": compute * (p - 1) / (m * (layout.vpp or 1))}
    # elements through one collective summed over the busiest stage's layers, and sent between stages
    layer_elements, boundary_elements = spec.plan_traffic(cfg, layout, text_tokens)
    if t > 1:
        collectives = 6 if layout.recompute == "full" else 4
        moved = collectives * 2 * (t - 1) / t * layer_elements * e * m
        seconds["tensor_parallel"] = moved / _bandwidth(t, gpu, a)
    if c > 1:  # model/context_attention.py: each rank receives the other c - 1 ranks' K and V
        # (2 x its own [S/c, H/t]) in the forward all-gather, sends as much back in the backward
        # reduce-scatter, and gathers again when full recompute reruns the forward; not overlapped
        passes = 3 if layout.recompute == "full" else 2
        moved = passes * 2 * (c - 1) * layer_elements * e / t * m
        seconds["context_parallel"] = moved / _bandwidth(t * c, gpu, a)
    if p > 1:
        sent = 2 * m * boundary_elements * e / (t if layout.sequence_parallel else 1)
        seconds["pipeline_p2p"] = sent / _bandwidth(t * p, gpu, a)
    if d > 1:
        local = total_params(cfg) / (p * t)  # parameters this rank owns (stages taken as equal)
        ring = (d - 1) / d / _bandwidth(t * p * c * d, gpu, a)
        gather = a.param_gather_exposed if not cfg.parallel.overlap_param_gather else a.grad_reduce_exposed
        seconds["data_parallel"] = local * ring * (4 * a.grad_reduce_exposed + e * gather)
    memory = memory_breakdown(cfg, layout, m, text_tokens, a.reserved_bytes)
    mfu = flops / gpus / sum(seconds.values()) / peak
    return Estimate(layout, m, memory, seconds, mfu)


def apply_layout(cfg: Config, layout: Layout) -> Config:
    out = copy.deepcopy(cfg)
    p = out.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size = layout.tp, layout.pp
    p.virtual_pipeline_model_parallel_size, p.context_parallel_size = layout.vpp, layout.cp
    p.sequence_parallel = layout.sequence_parallel
    out.train.micro_batch_size, out.model.recompute = layout.micro_batch_size, layout.recompute
    return out


def candidates(cfg: Config, gpus: int) -> list[Layout]:
    layers = cfg.model.num_layers
    out = []
    for tp in TP_SIZES:
        for pp in [p for p in range(1, layers + 1) if layers % p == 0 and p <= 16]:
            for vpp in [None] + ([v for v in VPP_SIZES if layers % (pp * v) == 0] if pp > 1 else []):
                for cp in CP_SIZES:
                    if gpus % (tp * pp * cp):
                        continue
                    for mbs in sorted({1, 2, cfg.train.micro_batch_size}):
                        # selective recompute re-runs core attention: it saves memory only
                        # where attention stores S x S probabilities (attention=dense)
                        for recompute in [r for r in RECOMPUTE
                                          if r != "selective" or cfg.model.attention == "dense"]:
                            out.append(Layout(tp, pp, vpp, cp, gpus // (tp * pp * cp), mbs, recompute, tp > 1))
    return out


def plan(cfg: Config, gpus: int, gpu: GPU, a: Assumptions, text_tokens: int
         ) -> tuple[list[Estimate], list[tuple[Layout, str]]]:
    """(fitting layouts, fastest first; [(rejected layout, reason)])."""
    fits, rejected = [], []
    budget = gpu.memory_bytes * a.usable_fraction
    for layout in candidates(cfg, gpus):
        if layout.tp > gpu.gpus_per_node:
            rejected.append((layout, f"TP{layout.tp} would span nodes (NVLink domain is "
                                     f"{gpu.gpus_per_node} GPUs)"))
            continue
        problems = validate(apply_layout(cfg, layout), gpus)
        if not problems and layout.vpp:
            micro_batches = StepSplit(cfg.train.global_batch_size, layout.micro_batch_size, layout.dp).micro_batches
            if micro_batches % layout.pp:
                problems = [f"interleaved pipelining (VPP{layout.vpp}) needs the micro-batches per step "
                            f"({micro_batches}) to be a multiple of PP={layout.pp} (megatron's schedule)"]
        if problems:
            rejected.append((layout, problems[0]))
            continue
        est = estimate(cfg, layout, gpus, gpu, a, text_tokens)
        if est.memory_total > budget:
            rejected.append((layout, f"needs {est.memory_total / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB "
                                     f"usable ({a.usable_fraction:.0%} of {gpu.name})"))
            continue
        fits.append(est)
    # Fastest first; among equals the one with less recompute, then less memory.
    fits.sort(key=lambda x: (round(x.step_seconds, 4), RECOMPUTE.index(x.layout.recompute), x.memory_total))
    return fits, rejected
