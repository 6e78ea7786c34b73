"""`genlip eval --checkpoint PATH --test test.jsonl [--train train.jsonl] [--zero-shot zero_shot.json]`
   `genlip eval --checkpoint RUN --test SHARD_DATASET [--eval-iters N]`   (the run's held-out loss)

Evaluates one model (an HF folder, or a training run directory / checkpoint folder) on CPU in one
process: held-out caption loss and perplexity, generative zero-shot top-1 (summed and length-normalised
scores, averaged over templates), a linear probe on frozen mean-pooled features, greedy captions of a
few test images, and optionally the same numbers for a random model of the same size and the
raw-pixel baseline. Data layout: see docs/evaluation.md (data_tools/fashion_mnist.py writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="HF folder, run directory or checkpoint folder")
    parser.add_argument("--test", required=True,
                        help="captions JSONL of held-out images (image, caption, label), or a shard dataset "
                             "(folder or manifest.json): its held-out caption loss as the run logs it")
    parser.add_argument("--eval-iters", type=int,
                        help="shard dataset: global batches to score (default: the run's train.eval_iters)")
    parser.add_argument("--train", help="captions JSONL with labels to fit the linear probe on")
    parser.add_argument("--zero-shot", help='JSON {"class_names": [...], "captions": [[...], ...]}')
    parser.add_argument("--tokenizer", help="tokenizer.json, HF tokenizer folder or dataset folder "
                                            "(default: the model's own, or its training dataset's)")
    parser.add_argument("--image-size", type=int, help="default: the model's (training config or processor)")
    parser.add_argument("--prompt", help="default: the training config's data.prompt")
    parser.add_argument("--limit-test", type=int, help="use the first N test lines")
    parser.add_argument("--limit-train", type=int, default=5000, help="use the first N train lines")
    parser.add_argument("--templates", type=int, help="zero-shot: use only the first K templates per class")
    parser.add_argument("--tasks", help="comma-separated subset of caption_loss, zero_shot, linear_probe, "
                        "attentive_probe, captions (default: every task the model's objective supports)")
    parser.add_argument("--random-baseline", action="store_true", help="also evaluate a random model")
    parser.add_argument("--pixel-baseline", action="store_true", help="also fit the raw-pixel probe")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", help="write all results to this file")


def _settings(args, defaults: dict):
    from genlip_megatron.eval.suite import TASKS, EvalSettings

    supported = defaults.get("tasks", TASKS)
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else list(supported)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    unsupported = [t for t in tasks if t not in supported]
    if unsupported:
        raise ValueError(f"tasks {unsupported} are not supported by this model's objective; it supports "
                         f"{', '.join(supported)}")
    settings = EvalSettings(tasks=tasks)
    settings.prompt = args.prompt if args.prompt is not None else defaults.get("prompt", settings.prompt)
    settings.max_caption_tokens = defaults.get("max_caption_tokens", settings.max_caption_tokens)
    settings.end_text = defaults.get("end_text", settings.end_text)
    return settings


def _print(name: str, metrics: dict) -> None:
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{name:>8} {key:<22} {value:.4f}")
    for i, text in enumerate(metrics.get("examples", {}).get("captions", [])):
        print(f"{name:>8} caption[{i}] {text}")


def _write_json(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


def _held_out(args) -> int:
    """--test names a shard dataset: the held-out loss a training run logs, from its checkpoint."""
    from genlip_megatron.checkpoint import run_dir
    from genlip_megatron.data.dataset_ref import manifest_file
    from genlip_megatron.eval.held_out import held_out_loss
    from genlip_megatron.eval.loading import load_checkpoint_model

    if not run_dir.is_checkpoint(args.checkpoint):
        raise ValueError(f"--test {args.test} is a shard dataset: its held-out loss packs samples as the run did, "
                         "so --checkpoint must be a training run or checkpoint folder (for an exported folder, "
                         "pass a captions JSONL)")
    model, cfg = load_checkpoint_model(args.checkpoint)
    results = {"model": held_out_loss(model, cfg, manifest_file(args.test), args.eval_iters)}
    _print("model", results["model"])
    if args.json:
        _write_json(args.json, results)
    return 0


def run(args) -> int:
    import torch

    from genlip_megatron.data.dataset_ref import is_dataset
    from genlip_megatron.data.tokenizer import Tokenizer
    from genlip_megatron.eval import datasets
    from genlip_megatron.eval.loading import load_model, random_like
    from genlip_megatron.eval.model_defaults import check_model_vocab, choose_tokenizer, model_defaults
    from genlip_megatron.eval.suite import evaluate_model, evaluate_pixels

    torch.set_num_threads(args.threads)
    if is_dataset(args.test):
        return _held_out(args)
    try:
        defaults = model_defaults(args.checkpoint)
        tokenizer = Tokenizer.from_file(choose_tokenizer(args.tokenizer, defaults))
        image_size = args.image_size or defaults.get("image_size")
        if not image_size:
            raise ValueError(f"--image-size is required: {args.checkpoint} records no image size")
        settings = _settings(args, defaults)
        model = load_model(args.checkpoint)
        check_model_vocab(model, tokenizer)
        test = datasets.load_jsonl_split(args.test, image_size, args.limit_test)
        train = datasets.load_jsonl_split(args.train, image_size, args.limit_train) if args.train else None
        captions = None
        if args.zero_shot:
            captions = datasets.load_zero_shot(args.zero_shot)[1]
            captions = [c[: args.templates] for c in captions] if args.templates else captions
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = {"model": evaluate_model(model, tokenizer, test, train, captions, settings)}
    if args.random_baseline:
        results["random"] = evaluate_model(random_like(model), tokenizer, test, train,
                                           captions, settings)
    if args.pixel_baseline and train is not None:
        results["pixels"] = evaluate_pixels(test, train, settings.probe_c)
    for name, metrics in results.items():
        _print(name, metrics)
    if args.json:
        _write_json(args.json, results)
    return 0

