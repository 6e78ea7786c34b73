"""Per-step metrics: throughput, TFLOP/s and MFU, written by rank 0 only.

Every step goes to TensorBoard, to `metrics.jsonl` in the run directory and, when
`logging.wandb_project` is set, to Weights & Biases. A progress bar runs when rank 0's stderr is a
terminal. One log line per `logging.log_interval` steps, averaged over that interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys

from genlip_megatron.checkpoint import run_dir as run_layout

log = logging.getLogger("genlip_megatron.train")


def throughput(samples: int, tokens: int, flops: float, seconds: float, world_size: int,
               peak_tflops: float | None) -> dict:
    """samples/s, tokens/s, TFLOP/s per device, and MFU (None when no peak is claimed)."""
    tflops_per_device = flops / seconds / world_size / 1e12
    return {"samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "tflops_per_device": tflops_per_device,
            "mfu": tflops_per_device / peak_tflops if peak_tflops else None}


def format_duration(seconds: float) -> str:
    """4h05m, 12m30s, 45s: what a person reads at a glance."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_line(step: int, total: int, m: dict) -> str:
    parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.3e}",
             "grad " + (f"{m['grad_norm']:.3f}" if m["grad_norm"] is not None else "n/a"),
             f"skipped {m['skipped_steps']}"]
    if m.get("consumed_samples") is not None:
        parts.append(f"{m['consumed_samples']:,} samples seen")
    parts += [f"{m['samples_per_s']:.1f} samples/s", f"{m['tokens_per_s']:.0f} tok/s",
              f"{m['tflops_per_device']:.3f} TFLOP/s/dev", f"{m['seconds_per_step'] * 1e3:.0f} ms/step"]
    if m.get("mfu") is not None:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    if m.get("peak_memory_bytes") is not None:
        parts.append(f"peak mem {m['peak_memory_bytes'] / 2**30:.2f} GiB")
    parts.append(f"ETA {format_duration((total - step) * m['seconds_per_step'])}")
    return " | ".join(parts)


class MetricsLogger:
    """Rank-0 sinks. Other ranks construct it with enabled=False and every call is a no-op."""

    def __init__(self, cfg, enabled: bool, start_step: int):
        self.enabled = enabled
        self.interval = cfg.logging.log_interval
        self.total = cfg.schedule.train_iters
        self._window: list[dict] = []
        self._tb = self._wandb = self._bar = self._jsonl = None
        if not enabled:
            return
        run_dir = cfg.checkpoint.dir
        tb_dir = cfg.logging.tensorboard_dir or (run_layout.tensorboard_dir(run_dir) if run_dir else "")
        if tb_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(tb_dir)
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
            self._jsonl = open(run_layout.metrics_path(run_dir), "a")  # noqa: SIM115 - closed in close()
        if cfg.logging.wandb_project:
            import wandb  # optional dependency: only needed when configured

            from genlip_megatron.config.load import config_to_dict

            self._wandb = wandb.init(project=cfg.logging.wandb_project,
                                     name=cfg.logging.wandb_run_name or None,
                                     config=config_to_dict(cfg), resume="allow")
        if cfg.logging.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self, step: int, metrics: dict) -> None:
        """Record step `step`'s metrics (loss, lr, grad_norm, ... see trainer.py)."""
        if not self.enabled:
            return
        clean = {k: v for k, v in metrics.items() if v is not None}
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": step, **clean}, allow_nan=True) + "\n")
            self._jsonl.flush()
        if self._tb:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb:
            self._wandb.log({f"train/{k}": v for k, v in clean.items()}, step=step)
        if self._bar:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        self._window.append(metrics)
        if step % self.interval == 0 or step == self.total:
            self._emit(step)

    def _emit(self, step: int) -> None:
        window, self._window = self._window, []
        finite = [m["loss"] for m in window if math.isfinite(m["loss"])]
        norms = [m["grad_norm"] for m in window if m["grad_norm"] is not None and math.isfinite(m["grad_norm"])]
        seconds = sum(m["seconds_per_step"] for m in window)
        last = window[-1]
        summary = dict(last, loss=sum(finite) / len(finite) if finite else float("nan"),
                       grad_norm=sum(norms) / len(norms) if norms else None,
                       seconds_per_step=seconds / len(window))
        for key in ("samples_per_s", "tokens_per_s", "tflops_per_device"):
            # rates over the window = total work / total time, not a mean of per-step rates
            summary[key] = sum(m[key] * m["seconds_per_step"] for m in window) / seconds
        if last.get("mfu") is not None:
            summary["mfu"] = sum(m["mfu"] * m["seconds_per_step"] for m in window) / seconds
        line = format_line(step, self.total, summary)
        if self._bar:
            self._bar.write(line)
        else:
            log.info(line)

    def evaluation(self, step: int, result: dict) -> None:
        """Record a held-out evaluation after `step` (training/held_out.py): metrics.jsonl gets its own
        line ({"step", "eval/caption_loss", ...}: no "loss" key, so loss readers skip it)."""
        if not self.enabled:
            return
        values = {"eval/caption_loss": result["loss"], "eval/tokens": result["tokens"],
                  "eval/samples": result["samples"], "eval/seconds": result["seconds"]}
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": step, **values}, allow_nan=True) + "\n")
            self._jsonl.flush()
        if self._tb and math.isfinite(result["loss"]):
            self._tb.add_scalar("eval/caption_loss", result["loss"], step)
        if self._wandb:
            self._wandb.log(values, step=step)
        self.message(f"eval after step {step}/{self.total} | held-out loss {result['loss']:.4f} over "
                     f"{result['tokens']:,} tokens of {result['samples']:,} samples | {result['seconds']:.1f} s")

    def end_of_run(self, step: int, result: dict) -> None:
        """Record the end-of-run zero-shot / probe accuracies (training/end_of_run.py) under eval/."""
        if not self.enabled:
            return
        values = {f"eval/{key}": value for key, value in result.items()}
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
            self._jsonl.flush()
        if self._tb:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb:
            self._wandb.log(values, step=step)
        self.message(f"end-of-run evaluation after step {step}: " + ", ".join(
            f"{key} {value:.4f}" for key, value in result.items() if key != "seconds")
            + f" | {result['seconds']:.1f} s")

    def message(self, text: str) -> None:
        if self.enabled:
            (self._bar.write if self._bar else log.info)(text)

    def close(self) -> None:
        for sink in (self._bar, self._tb, self._jsonl):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.finish()
