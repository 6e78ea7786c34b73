"""`genlip plan CONFIG [key=value ...] --gpus N --gpu h100`: layouts that fit, and why others do not.

    genlip plan genlip_g16 --gpus 1024 --gpu h100
    genlip plan genlip_g16_stage2 --gpus 1024 --gpu h100 --top 5

Prints the model's parameters, FLOPs per step, the memory of the best layout by component (with and
without full recompute), the ranked layouts that fit (step time, MFU, memory) and a count of the
rejected ones per reason with one example each. Parameters, memory, FLOPs and communication volume
are the config objective's planner model (ObjectiveSpec.plan_*, through launch/memory.py and
launch/layouts.py); step times use the stated hardware of launch/hardware.py. docs/scaling.md shows
the output for the GenLIP-g/16 recipes. Imports neither torch nor megatron.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace

from genlip_megatron.config.load import ConfigError, load_config, preset_names
from launch.hardware import GPUS, Assumptions, precision_peak_tflops
from launch.layouts import estimate, plan, step_flops
from launch.memory import DEFAULT_TEXT_TOKENS, GIB, total_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--gpus", type=int, required=True, help="total GPUs")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--top", type=int, default=10, help="fitting layouts to list")
    parser.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS,
                        help="mean text tokens per sample (prompt + caption + end), for FLOPs")
    parser.add_argument("--matmul-efficiency", type=float, default=Assumptions().matmul_efficiency,
                        help="share of peak the GEMMs reach (hardware.py)")


def _gib(x: float) -> str:
    return f"{x / GIB:6.1f}"


def _memory_lines(title: str, memory: dict[str, float]) -> list[str]:
    parts = "  ".join(f"{k} {v / GIB:.2f}" for k, v in memory.items())
    return [f"  {title}: {sum(memory.values()) / GIB:.1f} GiB = {parts} (GiB)"]


def report(cfg, gpus: int, gpu_name: str, top: int, text_tokens: int, assumptions: Assumptions) -> str:
    gpu = GPUS[gpu_name]
    fits, rejected = plan(cfg, gpus, gpu, assumptions, text_tokens)
    flops = step_flops(cfg, text_tokens)
    peak = precision_peak_tflops(gpu, cfg.train.precision)
    lines = [
        f"model: {cfg.model.objective}, {total_params(cfg) / 1e9:.3f} B parameters; {cfg.data.seq_length} "
        "tokens per sequence, "
        f"global batch {cfg.train.global_batch_size} sequences, {cfg.train.precision}",
        f"FLOPs per step: {flops:.3e} (model FLOPs, {text_tokens} text tokens per sample)",
        f"hardware: {gpus} x {gpu.name}: {peak:.0f} TFLOP/s peak, {gpu.memory_bytes / GIB:.1f} GiB, "
        f"matmul efficiency {assumptions.matmul_efficiency:.2f}, usable memory "
        f"{assumptions.usable_fraction:.0%} incl. {assumptions.reserved_bytes / GIB:.0f} GiB reserved",
    ]
    if fits:
        best = fits[0]
        lines.append(f"best layout {best.layout.describe()} ({best.micro_batches} micro-batches/step):")
        for recompute in ("none", "full"):
            other = estimate(cfg, replace(best.layout, recompute=recompute), gpus, gpu, assumptions, text_tokens)
            lines += _memory_lines(f"memory, recompute={recompute}", other.memory)
        secs = "  ".join(f"{k} {v * 1e3:.0f}" for k, v in best.seconds.items())
        lines.append(f"  step {best.step_seconds:.3f} s = {secs} (ms); MFU {best.mfu:.1%}; "
                     f"{cfg.train.global_batch_size * cfg.data.seq_length / best.step_seconds / gpus:,.0f} "
                     "tokens/s/GPU")
        lines.append(f"  overrides for genlip train / submit: {override_line(best.layout, gpus, gpu)}")
    lines.append(f"fitting layouts: {len(fits)} (fastest {min(top, len(fits))} shown)")
    lines.append(f"  {'layout':<52} {'GiB':>6} {'step s':>7} {'MFU':>6}")
    for est in fits[:top]:
        lines.append(f"  {est.layout.describe():<52} {_gib(est.memory_total)} {est.step_seconds:7.3f} "
                     f"{est.mfu:6.1%}")
    lines.append(f"rejected layouts: {len(rejected)}, by reason (one example each):")
    reasons = Counter(_reason_kind(reason) for _, reason in rejected)
    examples = {}
    for layout, reason in rejected:
        examples.setdefault(_reason_kind(reason), (layout, reason))
    for kind, count in reasons.most_common():
        layout, reason = examples[kind]
        lines.append(f"  {count:5d} x {kind}: e.g. {layout.describe()}: {reason}")
    return "\n".join(lines)


def override_line(layout, gpus: int, gpu) -> str:
    """`key=value ...` selecting `layout` on `gpus` GPUs: paste after CONFIG in train or submit."""
    per_node = min(gpus, gpu.gpus_per_node)
    launch = [f"launch.nodes={gpus // per_node}", f"launch.gpus_per_node={per_node}"] if gpus % per_node == 0 else []
    return " ".join(layout.overrides() + launch)


def _resolve_vocab(cfg) -> str | None:
    """model.vocab_size from the dataset's tokenizer when unset; a problem line when impossible."""
    if cfg.model.vocab_size is not None:
        return None
    if not cfg.data.manifest:
        return "model.vocab_size is unset: set it, or name data.manifest to take it from the dataset's tokenizer"
    from genlip_megatron.data.dataset_ref import load_tokenizer

    try:
        cfg.model.vocab_size = load_tokenizer(cfg.data.manifest).vocab_size
    except ValueError as exc:
        return f"data.manifest: {exc}"
    return None


def _reason_kind(reason: str) -> str:
    """A reason without its numbers, so that equal causes group together."""
    if reason.startswith("needs "):
        return "out of memory"
    key = reason.split("=", 1)[0].split(":", 1)[0].split(" ", 1)[0]
    return key


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print("\n".join(f"genlip plan: {e}" for e in exc.errors), file=sys.stderr)
        return 2
    if args.gpus < 1:
        print(f"genlip plan: --gpus={args.gpus} must be at least 1", file=sys.stderr)
        return 2
    problem = _resolve_vocab(cfg)
    if problem:
        print(f"genlip plan: {problem}", file=sys.stderr)
        return 2
    assumptions = Assumptions(matmul_efficiency=args.matmul_efficiency)
    print(report(cfg, args.gpus, args.gpu, args.top, args.text_tokens, assumptions))
    return 0
