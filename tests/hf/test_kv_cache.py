"""The KV cache of the plain-torch GenLIP: a prefill plus continuations gives the logits of one full
forward, for padded batches too, and greedy decoding through the cache equals decoding without it."""

from __future__ import annotations

import pytest
import torch
from genlip_tiny import VOCAB, tiny_model
from transformers import DynamicCache


def _inputs(batch: int = 2, text: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 12, generator=g), torch.randint(1, VOCAB, (batch, text), generator=g)


def test_prefill_then_continuations_equal_one_full_forward():
    model = tiny_model()
    pixels, ids = _inputs()
    with torch.no_grad():
        full = model(pixel_values=pixels, input_ids=ids).logits  # [2, 6 + 9, V]
        prefill = model(pixel_values=pixels, input_ids=ids[:, :4], use_cache=True)
        assert isinstance(prefill.cache, DynamicCache) and prefill.cache.get_seq_length() == 6 + 4
        middle = model(input_ids=ids[:, 4:7], cache=prefill.cache, rope_deltas=prefill.rope_deltas)
        last = model(input_ids=ids[:, 7:], cache=middle.cache, rope_deltas=middle.rope_deltas)
    assert last.cache.get_seq_length() == 6 + 9
    torch.testing.assert_close(prefill.logits, full[:, :10], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(middle.logits, full[:, 10:13], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.logits, full[:, 13:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prompts_continue_like_each_row_alone(side):
    """Row 1's prompt is 2 tokens padded to 4; its continuation matches its own unpadded forward."""
    model = tiny_model(seed=1)
    pixels, ids = _inputs(seed=2)
    prompt, new = ids[:, :4].clone(), ids[:, 4:7]
    pad = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]] if side == "left" else [[1, 1, 1, 1], [1, 1, 0, 0]])
    row1_prompt = prompt[1, 2:] if side == "left" else prompt[1, :2]
    prompt[pad == 0] = 0
    with torch.no_grad():
        prefill = model(pixel_values=pixels, input_ids=prompt, attention_mask=pad, use_cache=True)
        mask = torch.cat([pad, torch.ones(2, 3, dtype=pad.dtype)], dim=1)  # past text + new tokens
        cont = model(input_ids=new, cache=prefill.cache, rope_deltas=prefill.rope_deltas, attention_mask=mask)
        row0 = model(pixel_values=pixels[:1], input_ids=ids[:1, :7]).logits[0, -3:]
        row1 = model(pixel_values=pixels[1:], input_ids=torch.cat([row1_prompt, new[1]])[None]).logits[0, -3:]
    torch.testing.assert_close(cont.logits[0], row0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cont.logits[1], row1, rtol=1e-5, atol=1e-5)


def test_greedy_decoding_through_the_cache_equals_rerunning_the_sequence():
    model = tiny_model(seed=3)
    pixels, prompt = _inputs(text=3, seed=4)
    with torch.no_grad():
        seq = prompt
        for _ in range(6):  # no cache: the whole sequence every step
            seq = torch.cat([seq, model(pixel_values=pixels, input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
        out = model(pixel_values=pixels, input_ids=prompt, use_cache=True)
        cached = [out.logits[:, -1:].argmax(-1)]
        for _ in range(5):  # one new token per step, old name of the cache argument
            out = model(input_ids=cached[-1], past_key_values=out.cache, rope_deltas=out.rope_deltas)
            cached.append(out.logits[:, -1:].argmax(-1))
    assert torch.equal(torch.cat([prompt, *cached], dim=1), seq)


def test_explicit_text_positions_replace_rope_deltas():
    model = tiny_model()
    pixels, ids = _inputs()
    with torch.no_grad():
        full = model(pixel_values=pixels, input_ids=ids).logits
        prefill = model(pixel_values=pixels, input_ids=ids[:, :5], use_cache=True)
        positions = (3 + torch.arange(5, 9)).expand(2, -1)  # text starts at max(grid) = 3
        cont = model(input_ids=ids[:, 5:], cache=prefill.cache, position_ids=positions)
    torch.testing.assert_close(cont.logits, full[:, 11:], rtol=1e-5, atol=1e-5)
    assert torch.equal(cont.rope_deltas, prefill.rope_deltas)


def test_continuing_without_positions_or_with_pixels_is_refused():
    model = tiny_model()
    pixels, ids = _inputs()
    with torch.no_grad():
        prefill = model(pixel_values=pixels, input_ids=ids[:, :4], use_cache=True)
        with pytest.raises(ValueError, match="rope_deltas"):
            model(input_ids=ids[:, 4:], cache=prefill.cache)
        with pytest.raises(ValueError, match="no pixel_values"):
            model(pixel_values=pixels, input_ids=ids[:, 4:], cache=prefill.cache, rope_deltas=prefill.rope_deltas)
