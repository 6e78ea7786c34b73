"""Generative zero-shot classification: the class whose caption the model finds most likely wins.

For image x and class c with caption texts t_1..t_K (one per template, e.g. "a photo of a bag."):
    summed (CapPa):        score(c) = mean_k  sum_j log p(t_k[j] | x, prompt, t_k[<j])
    mean (OpenCLIP GenLIP): score(c) = mean_k (sum_j log p(...)) / len(t_k)
and the prediction is argmax_c score(c). Summed scoring favours short captions; length-normalised
scoring removes that bias but weighs a class-name token no more than "a" or "photo". Both are reported.

All C x K candidates of a group of images go through one packed forward (pair_log_likelihoods), so a
CPU evaluates 1,000 test images of Fashion-MNIST in well under a minute with the tiny preset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.eval.likelihood import DEFAULT_LOGIT_BUDGET, pair_log_likelihoods

REDUCTIONS = ("sum", "mean")


def encode_class_captions(tokenizer, captions: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """captions[c][k] text -> token ids (no prompt, no end tokens)."""
    return [[list(tokenizer.encode(text)) for text in per_class] for per_class in captions]


@torch.no_grad()
def zero_shot_log_likelihoods(model, images: torch.Tensor, class_ids: Sequence[Sequence[Sequence[int]]],
                              layout: TextLayout, include_end: bool = True, images_per_forward: int = 16,
                              logit_budget: int = DEFAULT_LOGIT_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood and token count of every (image, class, template) caption.

    Args:
        images: float [N, 3, H, W] in [-1, 1].
        class_ids: [C][K] caption token ids (every class has the same number K of templates).
    Returns:
        (log_likelihood float64 [N, C, K], tokens int64 [N, C, K]).
    """
    num_classes, num_templates = len(class_ids), len(class_ids[0])
    if any(len(per_class) != num_templates for per_class in class_ids):
        raise ValueError("every class needs the same number of caption templates")
    candidates = [ids for per_class in class_ids for ids in per_class]  # class-major, then template
    logp_parts, count_parts = [], []
    for start in range(0, len(images), images_per_forward):
        group = images[start : start + images_per_forward]
        pairs = [(i, ids) for i in range(len(group)) for ids in candidates]
        logp, counts = pair_log_likelihoods(model, group, pairs, layout, include_end, logit_budget)
        logp_parts.append(logp.reshape(len(group), num_classes, num_templates).numpy())
        count_parts.append(counts.reshape(len(group), num_classes, num_templates).numpy())
    return np.concatenate(logp_parts), np.concatenate(count_parts)


def class_scores(log_likelihood: np.ndarray, tokens: np.ndarray, reduction: str) -> np.ndarray:
    """[N, C, K] -> [N, C] by the module docstring's rule for `reduction` ("sum" | "mean")."""
    if reduction == "sum":
        return log_likelihood.mean(axis=2)
    if reduction == "mean":
        return (log_likelihood / np.maximum(tokens, 1)).mean(axis=2)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def zero_shot_classify(model, tokenizer, images: torch.Tensor, labels: np.ndarray,
                       captions: Sequence[Sequence[str]], layout: TextLayout, include_end: bool = True,
                       images_per_forward: int = 16) -> dict:
    """Top-1 accuracy under both reductions.

    Args:
        labels: int [N] true class indices into `captions`.
        captions: [C][K] caption texts per class and template.
    Returns:
        {"zero_shot_sum": acc, "zero_shot_mean": acc, "predictions_sum": int [N],
         "predictions_mean": int [N], "log_likelihood": [N, C, K], "tokens": [N, C, K]}.
    """
    class_ids = encode_class_captions(tokenizer, captions)
    logp, tokens = zero_shot_log_likelihoods(model, images, class_ids, layout, include_end, images_per_forward)
    labels = np.asarray(labels)
    out: dict = {"log_likelihood": logp, "tokens": tokens}
    for reduction in REDUCTIONS:
        predictions = class_scores(logp, tokens, reduction).argmax(axis=1)
        out[f"predictions_{reduction}"] = predictions
        out[f"zero_shot_{reduction}"] = float((predictions == labels).mean())
    return out
