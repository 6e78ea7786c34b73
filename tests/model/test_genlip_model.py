"""The megatron-core GenLIP at TP1 against the plain-torch reference: logits, mask semantics,
parameter count, vocabulary padding."""

import pytest
import torch
from multiproc import run_on_ranks
from parallel_parity import (
    tp1_bf16_loss,
    tp1_logits,
    tp1_padded_vocab_logits,
    tp1_parameter_counts,
    tp1_perturbation_effects,
)


@pytest.mark.parametrize("attention", ["dense", "fused"])
def test_logits_equal_reference_on_every_real_token(attention):
    [(ours, ref, batch)] = run_on_ranks(1, tp1_logits, attention)
    real = batch["segment_ids"] >= 0
    assert (ours - ref)[real].abs().max() <= 1e-5


def test_parameter_count_equals_reference():
    [(ours, ref)] = run_on_ranks(1, tp1_parameter_counts)
    assert ours == ref


@pytest.mark.parametrize("attention", ["dense", "fused"])
def test_prefix_lm_mask_semantics_by_perturbation(attention):
    [(b, image_pos, text_pos, by_image, by_text)] = run_on_ranks(
        1, tp1_perturbation_effects, attention)
    seg, img = b["segment_ids"][0], b["is_image"][0]
    positions = torch.arange(seg.numel())
    sample1, real = seg == 1, seg >= 0
    # Pack padding (no sample) carries no loss and feeds nothing; the CPU block kernel leaves an
    # arbitrary value there (varlen_attention.prefix_lm_block_attention), so only real tokens count.
    # An image token changes every token of its own sample (image and text) and nothing else.
    assert torch.equal(by_image[real], sample1[real])
    # A text token changes only itself and later text of its sample: never an image token,
    # never an earlier text token, never another sample.
    assert torch.equal(by_text[real], (sample1 & ~img & (positions >= text_pos))[real])
    assert real.sum() > 0.8 * real.numel() and (~real).any()
    assert image_pos < text_pos


def test_bf16_model_runs_in_bf16_and_tracks_the_fp32_loss():
    [(bf16_loss, fp32_loss, dtypes)] = run_on_ranks(1, tp1_bf16_loss)
    assert dtypes == {torch.bfloat16}
    assert abs(bf16_loss - fp32_loss) / fp32_loss < 2e-2


def test_padded_vocabulary_rows_take_no_softmax_mass():
    real = 200  # padded to 256 (make_vocab_size_divisible_by=128)
    [(ours, ref, batch)] = run_on_ranks(1, tp1_padded_vocab_logits, real)
    rows = batch["segment_ids"] >= 0
    assert torch.isinf(ours[..., real:]).all() and (ours[..., real:] < 0).all()
    # Over the true vocabulary the distribution is the reference's, renormalised to those rows.
    ours_lp = torch.log_softmax(ours[..., :real], -1)[rows]
    ref_lp = torch.log_softmax(ref[..., :real], -1)[rows]
    assert (ours_lp - ref_lp).abs().max() <= 1e-5
