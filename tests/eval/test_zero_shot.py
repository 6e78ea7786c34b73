"""Zero-shot scores equal log-likelihoods computed by hand from the HF forward, and pick their argmax."""

import math

import numpy as np
import pytest
import torch
from eval_fixtures import WordTokenizer, tiny_model, toy_images

from genlip_megatron.eval.likelihood import caption_loss, pair_log_likelihoods
from genlip_megatron.eval.sequences import text_layout
from genlip_megatron.eval.zero_shot import zero_shot_classify, zero_shot_log_likelihoods

PROMPT = "describe the image"
CAPTIONS = [  # [class][template]; templates of different lengths so "sum" and "mean" can disagree
    ["a photo of a bag.", "a bag."],
    ["a photo of an ankle boot.", "an ankle boot."],
    ["a small picture of a shirt.", "a shirt."],
]


def hand_log_likelihood(model, image, prompt_ids, caption_ids, end_ids, include_end=True):
    """Sum of log p(token | everything before it) over caption (+ end) tokens, one HF forward,
    read position by position."""
    ids = list(prompt_ids) + list(caption_ids) + list(end_ids)
    with torch.no_grad():
        logits = model(pixel_values=image[None], input_ids=torch.tensor([ids])).logits[0].double()
    n_img = logits.shape[0] - len(ids)
    last = len(ids) if include_end else len(ids) - len(end_ids)
    total = 0.0
    for j in range(len(prompt_ids), last):  # position n_img + j - 1 predicts ids[j]
        total += float(torch.log_softmax(logits[n_img + j - 1], dim=-1)[ids[j]])
    return total, last - len(prompt_ids)


def test_pair_log_likelihood_equals_hand_computed_sum():
    model, tok = tiny_model(), WordTokenizer()
    images = toy_images(2)
    layout = text_layout(tok, PROMPT)
    pairs = [(0, tok.encode("a photo of a bag.")), (1, tok.encode("an ankle boot.")), (0, tok.encode("a shirt."))]
    for include_end in (True, False):
        logp, counts = pair_log_likelihoods(model, images, pairs, layout, include_end=include_end)
        for (i, ids), got, n in zip(pairs, logp.tolist(), counts.tolist()):
            want, want_n = hand_log_likelihood(model, images[i], layout.prompt_ids, ids, tok.end_ids, include_end)
            assert n == want_n
            assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5)


def test_chunking_by_logit_budget_does_not_change_scores():
    model, tok = tiny_model(), WordTokenizer()
    images, layout = toy_images(3), text_layout(tok, PROMPT)
    pairs = [(i % 3, tok.encode(c)) for i, c in enumerate(c for per_class in CAPTIONS for c in per_class)]
    whole, _ = pair_log_likelihoods(model, images, pairs, layout)
    one_row_each, _ = pair_log_likelihoods(model, images, pairs, layout, logit_budget=1)
    torch.testing.assert_close(whole, one_row_each, rtol=1e-5, atol=1e-5)


def test_zero_shot_predicts_argmax_of_template_averaged_scores():
    model, tok = tiny_model(seed=3), WordTokenizer()
    images, layout = toy_images(5, seed=1), text_layout(tok, PROMPT)
    labels = np.array([0, 1, 2, 0, 1])
    result = zero_shot_classify(model, tok, images, labels, CAPTIONS, layout, images_per_forward=2)
    hand = np.zeros((5, 3, 2))
    lengths = np.zeros((5, 3, 2))
    for n in range(5):
        for c, per_class in enumerate(CAPTIONS):
            for k, text in enumerate(per_class):
                hand[n, c, k], lengths[n, c, k] = hand_log_likelihood(
                    model, images[n], layout.prompt_ids, tok.encode(text), tok.end_ids)
    np.testing.assert_allclose(result["log_likelihood"], hand, rtol=1e-5, atol=1e-5)
    want_sum = hand.mean(axis=2).argmax(axis=1)
    want_mean = (hand / lengths).mean(axis=2).argmax(axis=1)
    np.testing.assert_array_equal(result["predictions_sum"], want_sum)
    np.testing.assert_array_equal(result["predictions_mean"], want_mean)
    assert result["zero_shot_sum"] == float((want_sum == labels).mean())
    assert result["zero_shot_mean"] == float((want_mean == labels).mean())


@pytest.mark.parametrize("prompt", [PROMPT, ""])
@pytest.mark.parametrize("include_end", [True, False])
def test_cached_zero_shot_equals_uncached_full_sequences(prompt, include_end):
    """The prefix-cache scorer gives the scores of running every (image, caption) sequence whole."""
    model, tok = tiny_model(seed=5), WordTokenizer()
    images = toy_images(4, seed=2)
    layout = text_layout(tok, prompt, max_caption_tokens=5)  # "a small picture of a shirt." is cut
    ids = [[tok.encode(t) for t in per_class] for per_class in CAPTIONS]
    cached, counts = zero_shot_log_likelihoods(model, images, ids, layout, include_end, images_per_forward=3)
    pairs = [(n, c) for n in range(4) for per_class in ids for c in per_class]
    uncached, want_counts = pair_log_likelihoods(model, images, pairs, layout, include_end)
    np.testing.assert_allclose(cached.reshape(-1), uncached.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts.reshape(-1), want_counts.numpy())


def test_image_grouping_does_not_change_zero_shot_scores():
    model, tok = tiny_model(), WordTokenizer()
    images, layout = toy_images(5), text_layout(tok, PROMPT)
    ids = [[tok.encode(t) for t in per_class] for per_class in CAPTIONS]
    a, _ = zero_shot_log_likelihoods(model, images, ids, layout, images_per_forward=1)
    b, _ = zero_shot_log_likelihoods(model, images, ids, layout, images_per_forward=5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_caption_loss_is_mean_token_nll_and_perplexity_its_exp():
    model, tok = tiny_model(), WordTokenizer()
    images, layout = toy_images(2), text_layout(tok, PROMPT)
    texts = ["a photo of a bag.", "a shirt."]
    result = caption_loss(model, tok, images, texts, layout)
    parts = [hand_log_likelihood(model, images[i], layout.prompt_ids, tok.encode(t), tok.end_ids)
             for i, t in enumerate(texts)]
    want = -sum(p[0] for p in parts) / sum(p[1] for p in parts)
    assert result["caption_tokens"] == sum(p[1] for p in parts)
    assert math.isclose(result["caption_loss"], want, rel_tol=1e-6)
    assert math.isclose(result["caption_perplexity"], math.exp(want), rel_tol=1e-6)
