"""Arithmetic every objective's planner memory model shares (launch/plan.py, `genlip plan`).

How our training stores state, per parameter (training/model_setup.py): weights in the run's dtype
(bf16: 2 B, fp32: 4 B); megatron DDP keeps an fp32 gradient buffer (`grad_reduce_in_fp32=True`,
4 B); AdamW keeps fp32 exp_avg + exp_avg_sq (8 B) plus, under bf16, an fp32 master copy (4 B), and
the distributed optimizer shards those optimizer bytes over DP x CP. A `layout` is anything with
launch/memory.Layout's fields. Imports neither torch nor megatron.
"""

from __future__ import annotations

LOGIT_BYTES = 8  # per [token, V/t] element at the head's backward peak (fp32 softmax + its gradient)


def element_bytes(cfg) -> int:
    return 4 if cfg.train.precision == "fp32" else 2


def image_tokens(cfg) -> int:
    """Image tokens of the largest image: stage 2's pixel cap, or the square stage-1 image."""
    patch = cfg.model.patch_size
    if cfg.data.native_resolution:
        return cfg.data.max_pixels // patch**2
    return (cfg.data.image_size // patch) ** 2


def sequence_tokens(cfg, layout) -> float:
    """Tokens of one micro-batch on one context-parallel rank."""
    return cfg.data.seq_length * layout.micro_batch_size / layout.cp


def training_state(cfg, layout, params: float) -> dict[str, float]:
    """Weights, fp32 gradients and optimizer state of `params` parameters on one rank."""
    e = element_bytes(cfg)
    shard = layout.dp * layout.cp if cfg.parallel.use_distributed_optimizer else 1
    return {"weights": params * e, "gradients": params * 4,
            "optimizer": params * (8 + (4 if e == 2 else 0)) / shard}


def in_flight(layout, micro_batches: int) -> float:
    """Micro-batches whose activations the FIRST pipeline stage holds at the 1F1B peak, in units of
    its own layers: min(m, p) without interleaving; with VPP v, L (1 + (p-1)/(p v)) layers' worth
    (Korthikanti et al. 2022) expressed per stage. 1 without pipelining."""
    p = layout.pp
    if p == 1:
        return 1.0
    if layout.vpp:
        return p * (1 + (p - 1) / (p * layout.vpp)) * min(1.0, micro_batches / p)
    return float(min(micro_batches, p))
