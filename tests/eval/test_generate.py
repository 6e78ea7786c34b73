"""Greedy captions equal an argmax loop over the HF forward, and stop at the end-of-turn tokens."""

import torch
from eval_fixtures import WordTokenizer, tiny_model, toy_images

from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.eval.generate import caption_images, greedy_captions
from genlip_megatron.eval.sequences import text_layout


def argmax_loop(model, image, prompt_ids, steps):
    """Feed [image][prompt][generated] through the HF forward, append the argmax of the last logits."""
    ids = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(pixel_values=image[None], input_ids=torch.tensor([list(prompt_ids) + ids])).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids


def test_greedy_caption_equals_hand_argmax_loop():
    model, tok = tiny_model(seed=2), WordTokenizer()
    images = toy_images(3, seed=4)
    layout = TextLayout(tuple(tok.encode("describe the image")), (), 64)  # no end token: full length
    got = greedy_captions(model, images, layout, max_new_tokens=6)
    for image, ids in zip(images, got):
        assert ids == argmax_loop(model, image, layout.prompt_ids, 6)


def test_generation_stops_at_the_end_token_and_drops_it():
    model, tok = tiny_model(seed=2), WordTokenizer()
    image = toy_images(1, seed=4)
    prompt = tuple(tok.encode("describe the image"))
    free = argmax_loop(model, image[0], prompt, 6)
    cut = next(i for i in range(1, 6) if free[i] not in free[:i])  # first token not seen before
    layout = TextLayout(prompt, (free[cut],), 64)  # pretend that token ends the turn
    assert greedy_captions(model, image, layout, max_new_tokens=6) == [free[:cut]]


def test_caption_images_decodes_with_the_tokenizer():
    model, tok = tiny_model(seed=2), WordTokenizer()
    images = toy_images(2, seed=4)
    layout = text_layout(tok, "describe the image")
    ids = greedy_captions(model, images, layout, max_new_tokens=4)
    assert caption_images(model, tok, images, layout, max_new_tokens=4) == [tok.decode(i) for i in ids]
