"""Generative zero-shot classification: the class whose caption the model finds most likely wins.

For image x and class c with caption texts t_1..t_K (one per template, e.g. "a photo of a bag."):
    summed (CapPa):        score(c) = mean_k  sum_j log p(t_k[j] | x, prompt, t_k[<j])
    mean (OpenCLIP GenLIP): score(c) = mean_k (sum_j log p(...)) / len(t_k)
and the prediction is argmax_c score(c). Summed scoring favours short captions; length-normalised
scoring removes that bias but weighs a class-name token no more than "a" or "photo". Both are reported.

Prefix cache: the image and the prompt are the same for all C x K candidates of an image, so they run
once per image (a prefill that fills a transformers KV cache, genlip_megatron/hf/kv_cache.py). The
candidates' caption + end tokens then run as one continuation row per image, laid one after another,
each seeing the cached prefix and, causally, only its own tokens (`candidates_mask`) at the text
positions it would have alone - so the cache is neither copied nor repeated. A candidate's first
token is scored by the prefix's last logits, the rest by the continuation's. The result equals scoring every full sequence on its
own (`pair_log_likelihoods`; tests/eval/test_zero_shot.py), at a fraction of the work: on 2 CPU
threads the tiny preset scores 1,000 images x 10 classes in a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.eval.likelihood import DEFAULT_LOGIT_BUDGET

REDUCTIONS = ("sum", "mean")


def encode_class_captions(tokenizer, captions: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """captions[c][k] text -> token ids (no prompt, no end tokens)."""
    return [[list(tokenizer.encode(text)) for text in per_class] for per_class in captions]


def _candidate_batch(candidates: Sequence[Sequence[int]], layout: TextLayout, include_end: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption (truncated as in training) + end tokens of each candidate, right-padded with 0.

    Returns (tokens int64 [M, T], scored float64 [M, T]: 1 at the tokens whose log-probability counts).
    """
    prompt = len(layout.prompt_ids)
    rows = []  # (caption, end): a caption cut by the caption cap has no end tokens, as in training
    for ids in candidates:
        text, num_end = layout.text_ids(list(ids))
        text = text[prompt:].tolist()
        rows.append((text[: len(text) - num_end], text[len(text) - num_end :]))
    longest = max(len(c) + len(e) for c, e in rows)
    tokens = torch.zeros(len(rows), longest, dtype=torch.long)
    scored = torch.zeros(len(rows), longest, dtype=torch.float64)
    for i, (caption, end) in enumerate(rows):
        tokens[i, : len(caption) + len(end)] = torch.tensor(caption + end, dtype=torch.long)
        scored[i, : len(caption) + (len(end) if include_end else 0)] = 1.0
    return tokens, scored


def candidates_mask(cached: int, num_candidates: int, length: int, device=None) -> torch.Tensor:
    """bool [1, 1, Q, cached + Q], Q = num_candidates x length: candidates laid one after another in
    one row each see every cached key and, causally, their own tokens only (True = may attend)."""
    query = torch.arange(num_candidates * length, device=device)
    own = (query[:, None] // length == query[None, :] // length) & (query[None, :] <= query[:, None])
    prefix = torch.ones(len(query), cached, dtype=torch.bool, device=device)
    return torch.cat([prefix, own], dim=1)[None, None]


def _groups(model, num_candidates: int, prefix: int, length: int, budget: int, images_cap: int
            ) -> tuple[int, int]:
    """(images per prefill, candidates per continuation row) keeping the continuation's logits and
    its [Q, prefix + Q] mask within `budget` elements."""
    candidates = max(1, min(num_candidates, budget // max(1, length * (model.config.vocab_size + prefix))))
    while candidates > 1 and (candidates * length) ** 2 > budget // 4:
        candidates //= 2
    row = candidates * length * (model.config.vocab_size + prefix + candidates * length)
    return max(1, min(images_cap, budget // max(1, row))), candidates


@torch.no_grad()
def zero_shot_log_likelihoods(model, images: torch.Tensor, class_ids: Sequence[Sequence[Sequence[int]]],
                              layout: TextLayout, include_end: bool = True, images_per_forward: int = 64,
                              logit_budget: int = DEFAULT_LOGIT_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood and token count of every (image, class, template) caption.

    Args:
        model: the plain-torch GenLIP (genlip_megatron/hf), or anything with its cached `forward`.
        images: float [N, 3, H, W] in [-1, 1].
        class_ids: [C][K] caption token ids (every class has the same number K of templates).
        images_per_forward: most images per prefill (fewer when the memory budget asks).
    Returns:
        (log_likelihood float64 [N, C, K], tokens int64 [N, C, K]).
    """
    num_classes, num_templates = len(class_ids), len(class_ids[0])
    if any(len(per_class) != num_templates for per_class in class_ids):
        raise ValueError("every class needs the same number of caption templates")
    candidates = [ids for per_class in class_ids for ids in per_class]  # class-major, then template
    tokens, scored = _candidate_batch(candidates, layout, include_end)
    m, length = tokens.shape
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    prompt = torch.tensor(layout.prompt_ids, dtype=torch.long, device=device)
    patch = model.config.patch_size
    prefix = (images.shape[-2] // patch) * (images.shape[-1] // patch) + len(prompt)
    image_group, per_row = _groups(model, m, prefix, length - 1, logit_budget, images_per_forward)
    logp = torch.zeros(len(images), m, length, dtype=torch.float64)
    for start in range(0, len(images), image_group):
        pixels = images[start : start + image_group].to(device)
        n = len(pixels)
        out = model(pixel_values=pixels, input_ids=prompt.expand(n, -1) if len(prompt) else None,
                    use_cache=True)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [n, V]: predicts every token 0
        logp[start : start + n, :, 0] = first[:, tokens[:, 0]].double().cpu()
        if length == 1:
            continue
        cache, next_position = out.cache, out.rope_deltas + prefix  # [n, 1]
        for c0 in range(0, m, per_row):  # candidates c0.. in one row per image, prefix reused
            chunk = tokens[c0 : c0 + per_row]
            inputs = chunk[:, :-1].reshape(1, -1).expand(n, -1)  # [n, chunk * (T - 1)]
            positions = next_position + torch.arange(length - 1, device=device).repeat(len(chunk))
            mask = candidates_mask(prefix, len(chunk), length - 1, device)  # [1, 1, Q, P + Q]: broadcast over images
            logits = model(input_ids=inputs, cache=cache, position_ids=positions, attention_mask=mask).logits
            cache.crop(-inputs.shape[1])  # back to the prefix for the next chunk
            step = torch.log_softmax(logits.float(), dim=-1).reshape(n, len(chunk), length - 1, -1)
            targets = chunk[:, 1:].expand(n, -1, -1).unsqueeze(-1)
            logp[start : start + n, c0 : c0 + len(chunk), 1:] = step.gather(3, targets).squeeze(-1).double().cpu()
    sums = (logp * scored).sum(dim=2).reshape(len(images), num_classes, num_templates).numpy()
    counts = scored.sum(dim=1).long().reshape(1, num_classes, num_templates).expand(len(images), -1, -1)
    return sums, counts.numpy().copy()


def class_scores(log_likelihood: np.ndarray, tokens: np.ndarray, reduction: str) -> np.ndarray:
    """[N, C, K] -> [N, C] by the module docstring's rule for `reduction` ("sum" | "mean")."""
    if reduction == "sum":
        return log_likelihood.mean(axis=2)
    if reduction == "mean":
        return (log_likelihood / np.maximum(tokens, 1)).mean(axis=2)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def zero_shot_classify(model, tokenizer, images: torch.Tensor, labels: np.ndarray,
                       captions: Sequence[Sequence[str]], layout: TextLayout, include_end: bool = True,
                       images_per_forward: int = 64) -> dict:
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
