"""Short real training runs on this GPU (genlip_megatron/training/trainer.py in-process, synthetic
data, no checkpoints): the FP8 run tracking the bf16 run, and step time / TFLOP/s / MFU / peak memory
of L/16 and g/16 at full width and a few layers on a 16k-token pack."""

from __future__ import annotations

import os
import statistics

import torch

from gpu_checks.context import needs_gpu, skipped, verdict

FP8_STEPS = 50
FP8_TOLERANCE = {"last10_mean_relative": 0.02, "any_step_relative": 0.05}


def _train(ctx, preset: str, overrides: list[str]):
    """Run the trainer in this process; (outcome, peak CUDA bytes or None)."""
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.validate import check
    from genlip_megatron.training.trainer import run_training

    logs = os.path.join(ctx.work_dir, "tensorboard")
    cfg = load_config(preset, ["train.synthetic_data=true", "checkpoint.dir=", "checkpoint.load=",
                               f"logging.tensorboard_dir={logs}", "logging.log_interval=1000000",
                               "logging.progress_bar=false", f"train.device={ctx.device}", *overrides])
    check(cfg, 1)
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    outcome = run_training(cfg)
    peak = torch.cuda.max_memory_allocated() if ctx.cuda else None
    return outcome, peak


def fp8_tracks_bf16(ctx) -> dict:
    """50 steps of an L/16-wide, 2-layer model in bf16 and in FP8 (TE, delayed scaling) from the same
    weights and data: the FP8 loss must follow the bf16 loss."""
    skip = needs_gpu(ctx, te=True, fp8=True)
    if skip:
        return skip
    common = ["model.num_layers=2", "model.layer_spec=te", "model.attention=fused", "model.drop_path_rate=0",
              "data.seq_length=4096", "train.micro_batch_size=1", "train.global_batch_size=2",
              f"schedule.train_iters={FP8_STEPS}", "schedule.warmup_fraction=0.1"]
    losses = {}
    for precision in ("bf16", "fp8"):
        outcome, _ = _train(ctx, "genlip_l16", [*common, f"train.precision={precision}"])
        losses[precision] = [outcome.losses[s] for s in sorted(outcome.losses)]
    bf16, fp8 = losses["bf16"], losses["fp8"]
    last10 = abs(statistics.mean(fp8[-10:]) - statistics.mean(bf16[-10:])) / statistics.mean(bf16[-10:])
    worst = max(abs(a - b) / abs(b) for a, b in zip(fp8, bf16))
    learned = statistics.mean(bf16[-10:]) < 0.9 * bf16[0]
    return verdict(len(fp8) == FP8_STEPS and learned and last10 <= FP8_TOLERANCE["last10_mean_relative"]
                   and worst <= FP8_TOLERANCE["any_step_relative"],
                   steps=FP8_STEPS, last10_mean_relative=last10, worst_step_relative=worst,
                   bf16_first_last=(bf16[0], bf16[-1]), fp8_first_last=(fp8[0], fp8[-1]),
                   tolerance=FP8_TOLERANCE, losses=losses)


def throughput(ctx) -> dict:
    """Median step time of measured steps (after warm-up, incl. torch.compile), model TFLOP/s (the
    trainer's FLOPs count: head on loss positions, prefix-LM pairs), MFU against the dense bf16 peak,
    and peak allocated memory, per (model, precision)."""
    from genlip_megatron.training.mfu import bf16_peak_tflops

    warmup, measured = ctx.sizes((3, 6), (1, 2))
    if ctx.cuda:
        precisions = ["bf16"] + (["fp8"] if ctx.has_te and ctx.fp8_capable else [])
        spec = "te" if ctx.has_te else "local"
        runs = [(preset, p, ["model.num_layers=4", "data.seq_length=16384", f"model.layer_spec={spec}"])
                for preset in ("genlip_l16", "genlip_g16") for p in precisions]
        peak = bf16_peak_tflops(torch.cuda.get_device_name())
    else:
        runs = [("tiny_cpu", "fp32", ["data.seq_length=512", "model.attention=fused"])]
        peak = None
    rows = []
    for preset, precision, overrides in runs:
        outcome, memory = _train(ctx, preset, [*overrides, f"train.precision={precision}",
                                               "train.micro_batch_size=1", "train.global_batch_size=1",
                                               f"schedule.train_iters={warmup + measured}"])
        seconds = [sum(step.values()) for step in outcome.step_seconds[warmup:]]
        step_s = statistics.median(seconds)
        tflops = statistics.median(outcome.step_flops[warmup:]) / step_s / 1e12
        rows.append({"model": preset, "precision": precision, "overrides": overrides,
                     "step_s": step_s, "tokens_per_s": statistics.median(t for _, t in outcome.step_work[warmup:])
                     / step_s, "model_tflops": tflops, "mfu_of_bf16_peak": tflops / peak if peak else None,
                     "mfu_of_fp8_peak": tflops / (2 * peak) if peak and precision == "fp8" else None,
                     "peak_memory_gib": memory / 2**30 if memory is not None else None,
                     "final_loss": outcome.losses[max(outcome.losses)]})
    if not rows:
        return skipped("nothing to run")
    finite = all(torch.isfinite(torch.tensor(r["final_loss"])) for r in rows)
    return verdict(finite, bf16_peak_tflops=peak, warmup_steps=warmup, measured_steps=measured, runs=rows)
