"""Evaluate the demo's run beside the plain PyTorch reference, a random model and raw pixels, and
write DIR/report.md.

Inputs are the demo's files (data/, tokenizer.json, run/) and the reference trained in the same
demo (eval/reference_training.py: the HF model in a plain loop, same shards, order and schedule, for
the steps of our intermediate checkpoint). Output: report.md, results.json, loss_curve.png,
examples.png. Every number comes from eval/suite.py, the code `genlip eval` runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import torch

from genlip_megatron.checkpoint import run_dir as run_layout
from genlip_megatron.data.tokenizer import Tokenizer
from genlip_megatron.eval import report
from genlip_megatron.eval.datasets import load_jsonl_split, load_zero_shot
from genlip_megatron.eval.loading import load_checkpoint_model, random_model
from genlip_megatron.eval.reference_training import BATCH_SIZE, train_reference
from genlip_megatron.eval.suite import EvalSettings, evaluate_model, evaluate_pixels

EXAMPLES = 8
# What the official GenLIP code reached in the same setting (docs/sources.md, measured 2026-11-21).
REFERENCE = ("official GenLIP code, width 128 x 4 layers, batch 64, 1,463 steps in 7 min on 2 CPU threads: "
             "zero-shot top-1 0.833 (summed, one template, 1,000 test images), random init 0.11, "
             "raw-pixel logistic regression 0.828")


def _examples_figure(out: str, test, names: list[str], metrics: dict) -> str:
    captions = metrics["examples"].get("captions", [])
    predicted = metrics["examples"].get("zero_shot_sum", [])
    lines = []
    for i in range(min(EXAMPLES, len(captions))):
        lines.append([f"caption: {captions[i]}",
                      f"zero-shot: {names[predicted[i]] if i < len(predicted) else '?'}",
                      f"true: {names[test.labels[i]]}"])
    return report.plot_examples(test.images[: len(lines)], lines, os.path.join(out, "examples.png"))


def train_reference_model(run_dir: str, paths: dict, steps: int, seed: int) -> dict:
    """The plain loop on our run's config (same schedule, data order) for `steps` steps."""
    cfg = run_layout.read_run_config(run_layout.resolve_checkpoint(run_dir))
    cfg.data.manifest = paths["manifest"]
    trainer, speed = train_reference(cfg, steps, seed=seed, log_every=max(1, steps // 4))
    return {"model": trainer.model, "steps": steps, "losses": trainer.losses, **speed}


def _training_speed(run_dir: str) -> dict:
    """Our run's steady samples/s: samples over step seconds of its metrics (start-up excluded)."""
    samples = seconds = 0.0
    with open(run_layout.metrics_path(run_dir), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if "seconds_per_step" in r]  # training steps, not evaluation lines
    for record in records[len(records) // 10:]:  # the first tenth warms up (compilation, DALI)
        samples += record["samples"]
        seconds += record["seconds_per_step"]
    return {"samples": sum(r["samples"] for r in records), "samples_per_s": samples / seconds if seconds else 0.0}


def evaluate_and_report(out: str, run_dir: str, paths: dict, args, timings: dict, reference: dict | None = None,
                        started: float | None = None, train_layout: str = "") -> str:
    """Evaluate every model, write results.json, the figures and report.md; return the report's path.
    `started`: time.perf_counter() when the demo began, so the report's total includes this stage;
    `train_layout`: how our run was spread over processes and threads, for the speed table."""
    model, cfg = load_checkpoint_model(run_dir)
    tokenizer = Tokenizer.from_file(paths["tokenizer"])
    size = cfg.data.image_size
    start = time.perf_counter()
    test = load_jsonl_split(paths["test"], size, args.test)
    train = load_jsonl_split(paths["train"], size, args.probe_train)
    names, captions = load_zero_shot(paths["zero_shot"])
    captions = [c[: args.templates] for c in captions]
    timings["load evaluation images"] = time.perf_counter() - start
    settings = EvalSettings(prompt=cfg.data.prompt, max_caption_tokens=cfg.data.max_caption_tokens,
                            end_text=cfg.data.end_text, caption_examples=EXAMPLES)
    short = dataclasses.replace(settings, caption_examples=0)
    steps, losses = report.read_losses(run_layout.metrics_path(run_dir))
    results = {"trained": evaluate_model(model, tokenizer, test, train, captions, settings)}
    rows = [(f"GenLIP tiny, `genlip train`, {steps[-1] if steps else 0} steps", results["trained"])]
    if reference is not None:
        k = reference["steps"]
        early, _ = load_checkpoint_model(run_layout.checkpoint_path(run_dir, k))
        results["trained_early"] = evaluate_model(early, tokenizer, test, train, captions, short)
        results["reference"] = evaluate_model(reference["model"], tokenizer, test, train, captions, short)
        rows += [(f"same run at step {k}", results["trained_early"]),
                 (f"plain PyTorch loop (HF model), {k} steps of {BATCH_SIZE}", results["reference"])]
    results["random"] = evaluate_model(random_model(cfg, seed=args.seed), tokenizer, test, train,
                                       captions, short)
    results["pixels"] = evaluate_pixels(test, train, settings.probe_c)
    rows += [("same size, random init", results["random"]),
             ("raw pixels (logistic regression)", {"linear_probe": results["pixels"]["pixel_baseline"]})]
    eval_steps, eval_losses = report.read_eval_losses(run_layout.metrics_path(run_dir))
    report.plot_loss_curve(steps, losses, os.path.join(out, "loss_curve.png"), eval_steps=eval_steps,
                           eval_losses=eval_losses)
    _examples_figure(out, test, names, results["trained"])
    speed = _speed_section(run_dir, reference, train_layout, args.threads)
    total_seconds = time.perf_counter() - started if started is not None else None
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"results": results, "timings": timings, "steps": steps[-1] if steps else 0,
                   "speed": speed["numbers"], "total_seconds": total_seconds}, f, indent=1)

    notes = (f"\n\nTest: {len(test)} held-out images; probes fitted on {len(train)} training images; "
             f"zero-shot over {len(names)} classes x {len(captions[0])} template(s), the class caption's "
             "log-likelihood summed (CapPa) or averaged per token, given image and prompt. The plain "
             "loop trains the exported model class on the same shards, in the same sample order, with "
             "the same learning-rate schedule; compare it with our run at the same step.\n\n"
             f"Reference: {REFERENCE}.")
    who = [name for name in results if "seconds" in results[name]]
    stage_rows = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in timings.items())
    eval_rows = "\n".join(f"| {name}: {task} | {sec:.1f} |" for name in who
                          for task, sec in results[name]["seconds"].items())
    total = f" Whole demo: {total_seconds / 60:.1f} minutes." if total_seconds else ""
    with open(run_layout.config_path(run_layout.resolve_checkpoint(run_dir)), encoding="utf-8") as f:
        config_text = f.read()
    machine = (f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs visible), torch "
               f"{torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at the end")
    sections = [
        ("Results", report.metrics_table(rows) + notes),
        ("Training speed", speed["text"]),
        ("Training loss", (f"![loss curve](loss_curve.png)\n\nFinal logged loss: {losses[-1]:.3f} at step "
                           f"{steps[-1]}." + (f" Held-out caption loss logged during training (test split "
                                              f"shards): {eval_losses[-1]:.3f} at step {eval_steps[-1]}, "
                                              f"{eval_losses[0]:.3f} at step {eval_steps[0]}." if eval_steps
                                              else "")) if losses else "no metrics.jsonl"),
        ("Examples (first test images, greedy captions)", "![examples](examples.png)"),
        ("Time", (f"Machine: {machine}.{total}\n\n| stage | seconds |\n|---|---:|\n{stage_rows}\n\n"
                  f"| evaluation task | seconds |\n|---|---:|\n{eval_rows}")),
        ("Config", ("Preset `tiny_cpu` with the demo's overrides, as saved in the checkpoint:\n\n"
                    f"```yaml\n{config_text}```")),
    ]
    return report.write_markdown(os.path.join(out, "report.md"), sections, "GenLIP demo: Fashion-MNIST on CPU")


def _speed_section(run_dir: str, reference: dict | None, layout: str, threads: int) -> dict:
    ours = _training_speed(run_dir)
    numbers = {"ours_samples_per_s": ours["samples_per_s"], "ours_samples": ours["samples"]}
    lines = ["| loop | samples/s |", "|---|---:|",
             f"| `genlip train tiny_cpu`{', ' + layout if layout else ''} (loader, megatron-core, distributed optimizer) | "
             f"{ours['samples_per_s']:.1f} |"]
    if reference is not None:
        numbers.update(reference_samples_per_s=reference["samples_per_s"],
                       ratio=ours["samples_per_s"] / reference["samples_per_s"])
        lines += [f"| plain PyTorch loop, HF model, batch {BATCH_SIZE}, AdamW (data in memory), {threads} threads | "
                  f"{reference['samples_per_s']:.1f} |",
                  f"| ratio | {numbers['ratio']:.2f} |"]
    text = ("\n".join(lines) + "\n\nSteady-state training throughput on this machine in this run (ours: "
            "metrics.jsonl after the first tenth of the steps; the reference: its timed loop). Other "
            "load on the machine slows both; bench/train_step.py measures the ratio interleaved.")
    return {"numbers": numbers, "text": text}
