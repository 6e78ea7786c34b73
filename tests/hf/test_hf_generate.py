"""transformers' generate() on the plain-torch GenLIP: greedy captions with a KV cache equal the
reference argmax loop (eval/generate.py, no cache), the trunk really runs one new token per step, and
left-padded prompts of different lengths give each row what it gets alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "eval"))
from eval_fixtures import tiny_model, toy_images  # noqa: E402

from genlip_megatron.data.sample_sequence import TextLayout  # noqa: E402
from genlip_megatron.eval.generate import greedy_captions  # noqa: E402

PROMPT = [1, 2, 3]
STEPS = 7


def _generate(model, images, prompts, **kwargs):
    return model.generate(pixel_values=images, input_ids=prompts, max_new_tokens=STEPS, do_sample=False,
                          eos_token_id=None, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("seed", [0, 3])
def test_generate_equals_the_uncached_greedy_loop(seed):
    model, images = tiny_model(seed=seed), toy_images(4, seed=seed + 1)
    want = greedy_captions(model, images, TextLayout(tuple(PROMPT), (), 64), max_new_tokens=STEPS)
    with torch.no_grad():
        got = _generate(model, images, torch.tensor([PROMPT] * 4))
    assert got[:, : len(PROMPT)].tolist() == [PROMPT] * 4
    assert got[:, len(PROMPT):].tolist() == want


def test_generate_feeds_one_new_token_per_step_through_the_trunk():
    model, images = tiny_model(seed=1), toy_images(2, seed=2)
    lengths = []
    hook = model.visual.layers[0].register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            _generate(model, images, torch.tensor([PROMPT] * 2))
    finally:
        hook.remove()
    image_tokens = (8 // model.config.patch_size) ** 2
    assert lengths == [image_tokens + len(PROMPT)] + [1] * (STEPS - 1)


def test_left_padded_prompts_of_different_lengths_generate_as_if_alone():
    model, images = tiny_model(seed=4), toy_images(2, seed=5)
    short, long = [2, 3], [1, 2, 3, 4]
    alone = [_generate(model, images[i: i + 1], torch.tensor([p]))[0, len(p):].tolist()
             for i, p in enumerate((short, long))]
    ids = torch.tensor([[0, 0] + short, long])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        batched = _generate(model, images, ids, attention_mask=mask)
    assert batched[:, 4:].tolist() == alone


def test_generate_without_a_prompt_or_an_image_is_a_clear_error():
    model, images = tiny_model(), toy_images(1)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(pixel_values=images, max_new_tokens=2)
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(input_ids=torch.tensor([PROMPT]), max_new_tokens=2)
