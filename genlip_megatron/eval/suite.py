"""The evaluation suite one model gets: held-out caption loss, generative zero-shot (summed and
length-normalised), linear and attentive probes, example captions - plus the model-free raw-pixel
baseline. Which tasks a model supports is its objective's (ObjectiveSpec.eval_tasks).

`genlip eval` and `genlip demo` both call `evaluate_model`, so a number in a demo report and the same
number from the command line come from one code path. Each task is timed; a task whose inputs are
missing (no train split -> no probe, no labels -> no zero-shot) is left out of the result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from genlip_megatron.config.schema import DataConfig
from genlip_megatron.eval.attentive_probe import attentive_probe
from genlip_megatron.eval.datasets import LabelledImages
from genlip_megatron.eval.generate import caption_images
from genlip_megatron.eval.likelihood import caption_loss
from genlip_megatron.eval.linear_probe import linear_probe, patch_features, pixel_baseline
from genlip_megatron.eval.sequences import text_layout
from genlip_megatron.eval.zero_shot import zero_shot_classify

TASKS = ("caption_loss", "zero_shot", "linear_probe", "attentive_probe", "captions")


@dataclass
class EvalSettings:
    prompt: str = DataConfig().prompt  # must be the prompt the model was trained with
    max_caption_tokens: int | None = DataConfig().max_caption_tokens
    end_text: str | None = None  # the run's data.end_text; None: the tokenizer's own end-of-turn token
    include_end: bool = True  # zero-shot: score the end-of-turn tokens too (they carry loss in training)
    images_per_forward: int = 64  # zero-shot: most images per prefill (their C x K candidates share it)
    feature_source: str = "hidden_states"  # linear probe: after ln_post ("hidden_states") or "trunk"
    probe_c: float = 1.0  # inverse L2 strength of the probe's logistic regression
    attentive_epochs: int = 30  # attentive probe: passes over the training features
    caption_examples: int = 8  # test images that get a greedy caption
    max_new_tokens: int = 24
    tasks: Sequence[str] = field(default_factory=lambda: list(TASKS))


def evaluate_model(model, tokenizer, test: LabelledImages, train: LabelledImages | None = None,
                   zero_shot_captions: Sequence[Sequence[str]] | None = None,
                   settings: EvalSettings | None = None) -> dict:
    """Metrics of one model (floats), `seconds` per task, and `examples` (predictions, captions).

    Args:
        test: held-out images, labels (for zero-shot and the probe) and captions (for the loss).
        train: images and labels the probes are fitted on.
        zero_shot_captions: [C][K] caption texts per class and template, in label order.
    """
    settings = settings or EvalSettings()
    model.eval()
    layout = text_layout(tokenizer, settings.prompt, settings.max_caption_tokens, settings.end_text)
    metrics: dict = {"seconds": {}, "examples": {}}
    tasks = set(settings.tasks)

    def timed(name, fn):
        start = time.perf_counter()
        with torch.no_grad():
            value = fn()
        metrics["seconds"][name] = time.perf_counter() - start
        return value

    if "caption_loss" in tasks and all(test.captions):
        metrics.update(timed("caption_loss", lambda: caption_loss(model, tokenizer, test.images, test.captions, layout)))
    if "zero_shot" in tasks and zero_shot_captions is not None and (test.labels >= 0).all():
        result = timed("zero_shot", lambda: zero_shot_classify(
            model, tokenizer, test.images, test.labels, zero_shot_captions, layout, settings.include_end,
            settings.images_per_forward))
        metrics["zero_shot_sum"], metrics["zero_shot_mean"] = result["zero_shot_sum"], result["zero_shot_mean"]
        metrics["examples"]["zero_shot_sum"] = result["predictions_sum"].tolist()
        metrics["examples"]["zero_shot_mean"] = result["predictions_mean"].tolist()
    probes = tasks & {"linear_probe", "attentive_probe"}
    if probes and train is not None and (train.labels >= 0).all():
        train_x, test_x = timed("probe_features", lambda: (
            patch_features(model, train.images, source=settings.feature_source),
            patch_features(model, test.images, source=settings.feature_source)))
        if "linear_probe" in probes:
            result = timed("linear_probe", lambda: linear_probe(
                train_x.mean(1).numpy(), train.labels, test_x.mean(1).numpy(), test.labels, settings.probe_c))
            metrics["linear_probe"], metrics["linear_probe_train"] = result["accuracy"], result["train_accuracy"]
        if "attentive_probe" in probes:
            result = timed("attentive_probe", lambda: attentive_probe(
                train_x, train.labels, test_x, test.labels, epochs=settings.attentive_epochs))
            metrics["attentive_probe"] = result["accuracy"]
            metrics["attentive_probe_train"] = result["train_accuracy"]
    if "captions" in tasks and settings.caption_examples > 0:
        images = test.images[: settings.caption_examples]
        metrics["examples"]["captions"] = timed("captions", lambda: caption_images(
            model, tokenizer, images, layout, settings.max_new_tokens))
    return metrics


def evaluate_pixels(test: LabelledImages, train: LabelledImages, c: float = 1.0) -> dict:
    """The raw-pixel logistic-regression baseline on the same split as the probe."""
    start = time.perf_counter()
    result = pixel_baseline(train.images, train.labels, test.images, test.labels, c)
    return {"pixel_baseline": result["accuracy"], "pixel_baseline_train": result["train_accuracy"],
            "seconds": {"pixel_baseline": time.perf_counter() - start}}

