"""`genlip demo --out DIR` (what `make demo` runs): a tiny GenLIP learns Fashion-MNIST on one CPU.

Stages, each a library call or the `genlip train` command, each timed:
  1. data       Debian's Fashion-MNIST -> PNGs + captions JSONL (data_tools/fashion_mnist.py)
  2. tokenizer  byte-level BPE fitted on the training captions and the prompt
  3. shards     `genlip shards build` of the training JSONL (+ merge -> manifest.json)
  4. train      `genlip train tiny_cpu` under torchrun: --ranks data-parallel ranks sharing --threads
                CPU threads (default 2 ranks x 1 thread, docs/cpu_speed.md), a FIXED number of steps
                (the preset's schedule.train_iters: ~10 minutes on 2 quiet cores; a busy machine takes
                longer but learns the same), checkpoints every --reference-steps
  5. reference  the plain PyTorch loop (eval/reference_training.py) trains the HF model - the exported
                GenLIP - for --reference-steps on the same shards in the same order and schedule
  6. evaluate   our run (final, and at --reference-steps), the reference, a random model of the same
                size and raw pixels (eval/suite.py)
  7. report     DIR/report.md + loss curve + example images (eval/demo_report.py)
Expect: zero-shot top-1 >= 0.85 and a linear probe above the raw-pixel baseline (~0.8); see
docs/demo.md. Re-running with the same DIR reuses the data and a finished run/.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from genlip_megatron.checkpoint import run_dir as run_layout

PRESET = "tiny_cpu"
REFERENCE_SHARE = 8  # the reference trains 1/8 of our steps by default
EVAL_ITERS = 8  # held-out global batches per evaluation during training (8 x 8 packed sequences)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (data, shards, run, report.md)")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's schedule.train_iters)")
    parser.add_argument("--reference-steps", type=int,
                        help=f"steps of the plain PyTorch reference, and of our checkpoint it is compared with "
                             f"(default: steps / {REFERENCE_SHARE}; 0 skips the reference)")
    parser.add_argument("--train", type=int, default=60000, help="Fashion-MNIST training images to use (all 60,000)")
    parser.add_argument("--test", type=int, default=1000, help="held-out test images to evaluate on")
    parser.add_argument("--probe-train", type=int, default=5000, help="training images the probes are fitted on")
    parser.add_argument("--templates", type=int, default=5,
                        help="zero-shot templates per class (1..5; scores averaged over them)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and evaluation")
    parser.add_argument("--ranks", type=int, default=2,
                        help="data-parallel training processes; they share --threads (default 2: one thread "
                             "each on 2 cores, faster than one process on two threads)")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary (<= the preset's 512)")
    parser.add_argument("--seed", type=int, default=0)


@contextmanager
def _stage(timings: dict, name: str):
    print(f"[demo] {name} ...", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"[demo] {name} done in {timings[name]:.1f} s", flush=True)


def _sequence_texts(records, prompt: str):
    """The text of every training sequence: the prompt, then the caption. Fitting the BPE on both
    makes the prompt the few tokens it should cost (5 instead of 26 bytes' worth in every sample)."""
    for record in records:
        if prompt:
            yield prompt
        yield record["caption"]


def build_data(out: str, args) -> dict:
    """Stages 1-3; returns paths of the JSONLs, zero_shot.json, tokenizer.json, manifest.json and
    eval_manifest (the test split's shards)."""
    from data_tools import fashion_mnist
    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.merge import merge
    from data_tools.unit import BuildSettings
    from genlip_megatron.config.load import load_config
    from genlip_megatron.data.tokenizer import train_bpe

    prompt = load_config(PRESET).data.prompt
    paths = fashion_mnist.convert(os.path.join(out, "data"), args.train, args.test, args.seed)
    paths["tokenizer"] = os.path.join(out, "tokenizer.json")
    if not os.path.exists(paths["tokenizer"]):  # refitting would change the hash and orphan the shards
        train_bpe(_sequence_texts(fashion_mnist.read_jsonl(paths["train"]), prompt), args.vocab_size,
                  paths["tokenizer"])
    shards = os.path.join(out, "shards")
    settings = BuildSettings(caption=CaptionSettings(fields=("caption",)))
    result = run_build([paths["train"]], shards, paths["tokenizer"], settings, prompt, progress=False)
    if result["failed"]:
        raise RuntimeError(f"shard build failed for {result['failed']}")
    merge(shards)
    paths["manifest"] = os.path.join(shards, "manifest.json")
    # the held-out split as shards too: training logs its caption loss on them (data.eval_manifest)
    held_out = os.path.join(out, "shards_test")
    result = run_build([paths["test"]], held_out, paths["tokenizer"], settings, prompt, progress=False)
    if result["failed"]:
        raise RuntimeError(f"shard build failed for {result['failed']}")
    merge(held_out)
    paths["eval_manifest"] = os.path.join(held_out, "manifest.json")
    return paths


def _train(run_dir: str, manifest: str, steps: int, save_every: int, threads: int, ranks: int,
           eval_manifest: str | None = None) -> int:
    """`genlip train tiny_cpu` on `ranks` data-parallel CPU processes under torchrun (its own process
    group and megatron state), `threads` CPU threads shared among them."""
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.step_split import StepSplit
    from launch.local import rank_environment, threads_per_rank, torchrun_command

    per_rank = StepSplit.one_micro_batch_per_rank(load_config(PRESET), ranks).micro_batch_size
    overrides = [f"data.manifest={manifest}", f"checkpoint.dir={run_dir}", f"schedule.train_iters={steps}",
                 f"checkpoint.save_interval={save_every}", f"checkpoint.keep_last={steps // save_every + 1}",
                 f"train.micro_batch_size={per_rank}",  # one micro-batch per rank and step
                 "logging.progress_bar=false", "logging.log_interval=100"]
    if eval_manifest:  # ~10 held-out points on the loss curve, each over EVAL_ITERS global batches
        overrides += [f"data.eval_manifest={eval_manifest}", f"train.eval_interval={max(10, steps // 10)}",
                      f"train.eval_iters={EVAL_ITERS}"]
    env = rank_environment(threads_per_rank(threads, ranks))
    child = subprocess.Popen(torchrun_command(ranks, PRESET, overrides), env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGTERM)  # torchrun forwards it; each rank finishes the step, saves, exits 75
        child.wait()
        raise


def plan(args) -> tuple[int, int]:
    """(our steps, reference steps): fixed numbers, so results do not depend on machine load."""
    from genlip_megatron.config.load import load_config

    steps = args.steps or load_config(PRESET).schedule.train_iters
    reference = steps // REFERENCE_SHARE if args.reference_steps is None else args.reference_steps
    if not 0 <= reference <= steps:
        raise ValueError(f"--reference-steps {reference} must lie in [0, --steps {steps}]")
    return steps, reference


def run(args) -> int:
    import torch

    from genlip_megatron.eval.demo_report import evaluate_and_report, train_reference_model
    from launch.local import threads_per_rank

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(args.threads)
    timings: dict = {}
    start = time.perf_counter()
    try:
        steps, reference_steps = plan(args)
        with _stage(timings, "data, tokenizer, shards"):
            paths = build_data(out, args)
        run_dir = os.path.join(out, "run")
        if run_layout.has_checkpoint(run_dir):
            print(f"[demo] reusing the trained run in {run_dir} (delete it to train again)", flush=True)
        else:
            print(f"[demo] training {steps} steps (fixed; ~10 minutes on 2 quiet cores)", flush=True)
            with _stage(timings, "train"):
                code = _train(run_dir, paths["manifest"], steps, reference_steps or steps, args.threads,
                              args.ranks, paths["eval_manifest"])
            if code != 0:
                raise RuntimeError(f"training exited with {code}; see its log above")
        reference = None
        if reference_steps:
            with _stage(timings, "reference (plain PyTorch loop)"):
                reference = train_reference_model(run_dir, paths, reference_steps, args.seed)
        with _stage(timings, "evaluate + report"):
            layout = f"{args.ranks} data-parallel rank(s) x {threads_per_rank(args.threads, args.ranks)} thread(s)"
            report = evaluate_and_report(out, run_dir, paths, args, timings, reference, started=start,
                                         train_layout=layout)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[demo] wrote {report} ({(time.perf_counter() - start) / 60:.1f} minutes in all)")
    return 0
