"""The prefix-LM mask against a hand loop over docs/batch.md's rule, and through the model by perturbation."""

from __future__ import annotations

import torch
from genlip_tiny import pack, packed_inputs, three_samples, tiny_model

from genlip_megatron.hf.masks import prefix_lm_mask


def test_mask_matches_rule_written_as_a_loop():
    #            sample 0 (img img txt txt)  sample 1 (img txt txt txt)  padding
    segment_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, -1, -1]])
    is_image = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    mask = prefix_lm_mask(segment_ids, is_image)
    assert mask.shape == (1, 1, 10, 10) and mask.dtype == torch.bool
    for q in range(10):
        for k in range(10):
            sq, sk = int(segment_ids[0, q]), int(segment_ids[0, k])
            if sq < 0 or sk < 0:
                allowed = q == k and sq < 0  # padding sees only itself, nothing sees padding
            elif sq != sk:
                allowed = False
            elif is_image[0, k]:
                allowed = True
            else:
                allowed = (not is_image[0, q]) and k <= q
            assert bool(mask[0, 0, q, k]) == (not allowed), (q, k)


def _outputs(model, samples, seq_length=32):
    batch = pack(samples, seq_length)
    with torch.no_grad():
        return model.forward_packed(**packed_inputs(batch))["logits"][0], batch


def _changed(a, b):
    return (a - b).abs().amax(-1) > 1e-6  # [S]


def test_text_never_changes_image_or_earlier_text():
    samples = three_samples()
    model = tiny_model()
    base, _ = _outputs(model, samples)
    edited = [dict(s) for s in samples]
    edited[0] = {"pixels": samples[0]["pixels"], "text": samples[0]["text"].clone()}
    edited[0]["text"][2] = (edited[0]["text"][2] + 1) % 97 or 1  # position 6 (image) + 2 = 8 in the pack
    new, _ = _outputs(model, edited)
    changed = _changed(base, new)
    assert not changed[:8].any()  # 6 image patches + 2 earlier text tokens
    assert changed[8:11].all()  # the edited token and the later text of sample 0
    assert not changed[11:].any()  # other samples and padding


def test_an_image_patch_changes_every_text_token_of_its_sample():
    samples = three_samples()
    model = tiny_model()
    base, batch = _outputs(model, samples)
    edited = [dict(s) for s in samples]
    pixels = samples[1]["pixels"].clone()
    pixels[:, 4:8, :] += 1.0  # second patch of sample 1 (grid 3 x 1)
    edited[1] = {"pixels": pixels, "text": samples[1]["text"]}
    new, _ = _outputs(model, edited)
    changed = _changed(base, new)
    sample1 = batch["segment_ids"][0] == 1
    assert changed[sample1].all()  # its own patches and every text token
    assert not changed[~sample1].any()  # nothing crosses samples, padding untouched


def test_nothing_crosses_samples_and_padding_changes_nothing():
    samples = three_samples()
    model = tiny_model()
    base, batch = _outputs(model, samples)
    seg = batch["segment_ids"][0]
    # replace sample 2 entirely: samples 0 and 1 must not move
    other = {"pixels": torch.randn(3, 8, 8), "text": torch.randint(1, 97, (7,))}
    new, _ = _outputs(model, samples[:2] + [other])
    assert not _changed(base, new)[(seg == 0) | (seg == 1)].any()
    # garbage tokens at padding positions change nothing outside padding
    inputs = packed_inputs(batch)
    inputs["tokens"] = inputs["tokens"].clone()
    inputs["tokens"][0, seg < 0] = 5
    with torch.no_grad():
        new = model.forward_packed(**inputs)["logits"][0]
    assert not _changed(base, new)[seg >= 0].any()
