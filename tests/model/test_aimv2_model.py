"""The megatron-core AIMv2 at TP1 against independent references: the plain-torch model, hand
computations of the prefix mask, the pixel-loss positions and the normalised target, and
transformers' Aimv2VisionModel loading our exported encoder."""

import numpy as np
import pytest
import torch
from aimv2_parity import micro_batches, tp1_encoder_features, tp1_export, tp1_outputs
from multiproc import run_on_ranks


@pytest.fixture(scope="module")
def outputs():
    [out] = run_on_ranks(1, tp1_outputs)
    return out


@pytest.mark.parametrize("name", ["features", "pixels", "logits"])
def test_outputs_equal_plain_torch_reference_on_every_real_position(outputs, name):
    ours, ref = outputs[name]
    real = outputs["batch"]["segment_ids"] >= 0
    assert (ours - ref)[real].abs().max() <= 1e-5


def test_encoder_prefix_mask_semantics_by_perturbation():
    # Row 0 of micro-batch 0 holds samples of 12, 6 and 4 patches at compact slots 0-11, 12-17, 18-21.
    prefix = torch.zeros(48, dtype=torch.bool)
    prefix[[0, 1, 2, 3, 4, 12, 13, 18]] = True  # prefix lengths 5, 2, 1
    [(base, seg)] = run_on_ranks(1, tp1_encoder_features, prefix, None)
    slots = torch.arange(base.shape[0])
    for patch, expected in ((7, (seg == 0) & (slots >= 7)),  # non-prefix: itself and later patches
                            (2, seg == 0),                   # prefix: the whole sample
                            (15, (seg == 1) & (slots >= 15))):
        [(moved, _)] = run_on_ranks(1, tp1_encoder_features, prefix, patch)
        changed = (moved - base).abs().amax(-1) > 1e-6
        assert torch.equal(changed, expected), (patch, changed.nonzero().flatten().tolist())


def _hand_normalised(patch: np.ndarray) -> np.ndarray:
    return (patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 1e-6)


def test_pixel_loss_only_on_non_prefix_next_patches_with_hand_normalised_target(outputs):
    b = outputs["batch"]
    mse = outputs["per_position"][1]
    pixels = outputs["pixels"][0].double().numpy()
    is_image, seg, prefix = b["is_image"], b["segment_ids"], b["image_prefix"]
    patches = torch.zeros(*is_image.shape, b["image_patches"].shape[-1], dtype=torch.float64)
    patches[is_image] = b["image_patches"].double()
    expected_mse = torch.zeros_like(mse)
    for r in range(is_image.shape[0]):
        for s in range(is_image.shape[1] - 1):
            if (is_image[r, s] and is_image[r, s + 1] and seg[r, s] == seg[r, s + 1]
                    and not prefix[r, s + 1]):
                target = _hand_normalised(patches[r, s + 1].numpy())
                expected_mse[r, s] = float(((pixels[r, s] - target) ** 2).mean())
    assert prefix.any() and (is_image & ~prefix).any()
    assert torch.equal(mse != 0, expected_mse != 0)  # loss exactly where a non-prefix patch is next
    assert (mse - expected_mse).abs().max() <= 1e-5


def test_text_loss_is_next_token_cross_entropy_on_caption_tokens(outputs):
    b = outputs["batch"]
    logits = outputs["logits"][0].double()
    ce = outputs["per_position"][0]
    where = b["loss_mask"] > 0
    expected = torch.nn.functional.cross_entropy(logits[where], b["labels"][where], reduction="none")
    assert (ce[where] - expected).abs().max() <= 1e-5


def test_prefix_draw_is_deterministic_uniform_and_a_leading_run():
    from genlip_megatron.model.aimv2_prefix import full_image_prefix, random_image_prefix

    b = micro_batches()[0]
    seg, img = b["segment_ids"], b["is_image"]

    def draw(key):
        return random_image_prefix(seg, img, 7, key)

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    lengths = []
    for key in range(300):
        prefix = draw(key)
        first = (seg[0] == 0) & img[0]  # sample 0 of row 0: 12 patches at positions 0..11
        n = int(prefix[0][first].sum())
        assert torch.equal(prefix[0][first], torch.arange(12) < n)  # the first n patches
        assert not (prefix & ~img).any()
        lengths.append(n)
    assert set(lengths) == set(range(1, 12))  # every length in [1, N - 1], never 0 or N
    assert torch.equal(full_image_prefix(img), img)


@pytest.mark.parametrize("kind,grid_h,grid_w", [("learned", 5, 5), ("sincos", 3, 4)])
def test_exported_encoder_loads_in_transformers_with_same_features(tmp_path, kind, grid_h, grid_w):
    [(ours, theirs)] = run_on_ranks(1, tp1_export, str(tmp_path), kind, grid_h, grid_w)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5
    assert (tmp_path / "config.json").read_text().count('"aimv2_vision_model"') == 1


@pytest.mark.parametrize("preset,width,heads", [("aimv2_l14", 1024, 8), ("aimv2_h14", 1536, 12),
                                                ("aimv2_1b14", 2048, 16), ("aimv2_3b14", 3072, 24)])
def test_presets_validate_and_describe_the_aimv2_encoders(preset, width, heads):
    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.validate import validate
    from genlip_megatron.convert.hf_config import aimv2_vision_config_kwargs as vision_config_kwargs

    m = load_config(preset).model
    assert validate(load_config(preset), world_size=8) == []
    assert (m.objective, m.hidden_size, m.num_layers, m.num_attention_heads, m.patch_size) == (
        "aimv2", width, 24, heads, 14)
    assert (m.decoder_hidden_size, m.decoder_num_layers, m.decoder_num_attention_heads) == (1024, 12, 8)
    assert 2 * sum(m.decoder_mrope_section) == m.decoder_hidden_size // m.decoder_num_attention_heads
    assert vision_config_kwargs(m)["hidden_size"] == width and m.pixel_loss_weight == 0.4
