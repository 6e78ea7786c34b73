"""Evaluate the demo's trained run beside a random model and raw pixels, and write DIR/report.md.

Inputs are the demo's files (data/, tokenizer.json, run/); output: report.md, results.json,
loss_curve.png, examples.png. Every number comes from eval/suite.py, the code `genlip eval` runs.
"""

from __future__ import annotations

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


def evaluate_and_report(out: str, run_dir: str, paths: dict, args, timings: dict) -> str:
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
                            end_text=cfg.data.end_text,
                            caption_examples=EXAMPLES)
    results = {
        "trained": evaluate_model(model, tokenizer, test, train, captions, settings),
        "random": evaluate_model(random_model(cfg.model, seed=args.seed), tokenizer, test, train, captions,
                                 settings),
        "pixels": evaluate_pixels(test, train, settings.probe_c),
    }
    steps, losses = report.read_losses(run_layout.metrics_path(run_dir))
    report.plot_loss_curve(steps, losses, os.path.join(out, "loss_curve.png"))
    _examples_figure(out, test, names, results["trained"])
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"results": results, "timings": timings, "steps": steps[-1] if steps else 0}, f, indent=1)

    pixels = {"linear_probe": results["pixels"]["pixel_baseline"]}
    table = report.metrics_table([(f"GenLIP tiny, trained {steps[-1] if steps else 0} steps", results["trained"]),
                                  ("same size, random init", results["random"]),
                                  ("raw pixels (logistic regression)", pixels)])
    notes = (f"\n\nTest: {len(test)} held-out images; probes fitted on {len(train)} training images; "
             f"zero-shot over {len(names)} classes x {len(captions[0])} template(s), the class caption's "
             "log-likelihood summed (CapPa) or averaged per token, given image and prompt.\n\n"
             f"Reference: {REFERENCE}.")
    stage_rows = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in timings.items())
    eval_rows = "\n".join(f"| {who}: {task} | {sec:.1f} |" for who in ("trained", "random", "pixels")
                          for task, sec in results[who]["seconds"].items())
    with open(run_layout.config_path(run_layout.resolve_checkpoint(run_dir)), encoding="utf-8") as f:
        config_text = f.read()
    machine = (f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs visible), torch "
               f"{torch.__version__}, {args.threads} threads")
    sections = [
        ("Results", table + notes),
        ("Training loss", (f"![loss curve](loss_curve.png)\n\nFinal logged loss: {losses[-1]:.3f} at step "
                           f"{steps[-1]}.") if losses else "no metrics.jsonl"),
        ("Examples (first test images, greedy captions)", "![examples](examples.png)"),
        ("Time", (f"Machine: {machine}.\n\n| stage | seconds |\n|---|---:|\n{stage_rows}\n\n"
                  f"| evaluation task | seconds |\n|---|---:|\n{eval_rows}")),
        ("Config", ("Preset `tiny_cpu` with the demo's overrides, as saved in the checkpoint:\n\n"
                    f"```yaml\n{config_text}```")),
    ]
    return report.write_markdown(os.path.join(out, "report.md"), sections, "GenLIP demo: Fashion-MNIST on CPU")
