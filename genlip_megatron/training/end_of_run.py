"""Optional evaluation after the last step: generative zero-shot and a linear probe of the final
checkpoint, on labelled images named in the config (data.eval_labelled, data.eval_zero_shot,
data.eval_probe_train), logged with the run's metrics.

It runs on rank 0 alone, on the checkpoint the run just saved, through the same code as `genlip eval`
(eval/suite.py on the plain-torch model): the numbers equal `genlip eval --checkpoint RUN --test
<eval_labelled> --zero-shot <eval_zero_shot> --train <eval_probe_train> --limit-test N --limit-train N`.
"""

from __future__ import annotations


def wanted(cfg) -> bool:
    d = cfg.data
    return bool(d.eval_labelled and (d.eval_zero_shot or d.eval_probe_train))


def end_of_run_evaluation(cfg, run_dir: str) -> dict:
    """{"zero_shot_sum", "zero_shot_mean", "linear_probe", "linear_probe_train", "seconds"} (those the
    config asks for) of the newest checkpoint in run_dir."""
    from genlip_megatron.data.dataset_ref import dataset_tokenizer_file
    from genlip_megatron.data.tokenizer import Tokenizer
    from genlip_megatron.eval import datasets
    from genlip_megatron.eval.loading import load_checkpoint_model
    from genlip_megatron.eval.suite import EvalSettings, evaluate_model

    d, limit = cfg.data, cfg.train.eval_labelled_images
    model, run_cfg = load_checkpoint_model(run_dir)
    tokenizer = Tokenizer.from_file(dataset_tokenizer_file(d.manifest))
    test = datasets.load_jsonl_split(d.eval_labelled, d.image_size, limit)
    train = datasets.load_jsonl_split(d.eval_probe_train, d.image_size, limit) if d.eval_probe_train else None
    captions = datasets.load_zero_shot(d.eval_zero_shot)[1] if d.eval_zero_shot else None
    tasks = (["zero_shot"] if captions is not None else []) + (["linear_probe"] if train is not None else [])
    settings = EvalSettings(prompt=d.prompt, max_caption_tokens=d.max_caption_tokens, end_text=d.end_text,
                            tasks=tasks, caption_examples=0)
    metrics = evaluate_model(model, tokenizer, test, train, captions, settings)
    keys = ("zero_shot_sum", "zero_shot_mean", "linear_probe", "linear_probe_train")
    return {**{k: metrics[k] for k in keys if k in metrics}, "seconds": sum(metrics["seconds"].values())}


def input_problems(cfg) -> list[str]:
    """Why the configured end-of-run evaluation could not run, one line each naming the key."""
    import os

    d, out = cfg.data, []
    for key in ("eval_labelled", "eval_zero_shot", "eval_probe_train"):
        path = getattr(d, key)
        if path and not os.path.isfile(path):
            out.append(f"data.{key}={path}: no such file")
    if (d.eval_zero_shot or d.eval_probe_train) and not d.eval_labelled:
        out.append("data.eval_zero_shot / data.eval_probe_train need data.eval_labelled (the labelled test images)")
    if wanted(cfg) and not cfg.checkpoint.dir:
        out.append("data.eval_labelled: the end-of-run evaluation reads the final checkpoint: set checkpoint.dir")
    if wanted(cfg) and cfg.train.synthetic_data:
        out.append("data.eval_labelled: the end-of-run evaluation needs the training dataset's tokenizer, "
                   "and train.synthetic_data=true has none")
    return out
