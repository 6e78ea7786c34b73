"""The GenLIP FLOPs formula against a hand count, and where MFU is (not) claimed."""

import torch

from genlip_megatron.hf.masks import prefix_lm_mask
from genlip_megatron.objectives.genlip.flops import ModelShape, count_tokens, forward_flops, train_step_flops
from genlip_megatron.training.mfu import bf16_peak_tflops, mfu_peak_tflops

# One packed row of S = 10: sample 0 = 2 image patches + 3 text, sample 1 = 1 patch + 2 text, 2 pad.
SEGMENTS = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1, -1]], dtype=torch.int32)
IS_IMAGE = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
SPANS = torch.tensor([[0, 2, 5], [5, 6, 8]])  # (start, text start, end) per sample, as the packer writes
# Loss on the last two text positions of sample 0 and the last of sample 1 (the rest is prompt).
LOSS_MASK = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 1, 0, 0]], dtype=torch.float32)
SHAPE = ModelShape(hidden=4, ffn_hidden=6, layers=2, text_embed_dim=4, padded_vocab=16, patch_dim=12)


def test_counts_and_allowed_pairs_match_the_prefix_lm_mask():
    counts = count_tokens(SPANS, LOSS_MASK)
    assert (counts.image_tokens, counts.text_tokens, counts.samples, counts.loss_tokens) == (3, 5, 2, 3)
    # Hand count: sample 0 -> 2*2 + 3*2 + (1+2+3) = 16, sample 1 -> 1 + 2*1 + (1+2) = 6.
    assert counts.attention_pairs == 22
    # Independent: allowed (query, key) pairs of the real attention mask, padding rows excluded.
    mask = prefix_lm_mask(SEGMENTS, IS_IMAGE)  # True = masked, [B, 1, S, S]
    allowed = (~mask[0, 0]) & (SEGMENTS[0] >= 0).unsqueeze(1)
    assert int(allowed.sum()) == counts.attention_pairs


def test_training_flops_equal_a_hand_count():
    counts = count_tokens(SPANS, LOSS_MASK)
    patch_embed = 2 * 3 * 12 * 4  # 288
    per_layer = (2 * 8 * 4 * 16  # q, gate, k, v: 1024
                 + 2 * 8 * 16  # out projection: 256
                 + 2 * 8 * 3 * 4 * 6  # SwiGLU: 1152
                 + 4 * 4 * 22)  # QK^T and PV over 22 allowed pairs: 352
    lm_head = 2 * 3 * 4 * 16  # on the 3 loss positions only: 384
    assert forward_flops(SHAPE, counts) == patch_embed + 2 * per_layer + lm_head == 6240
    assert train_step_flops(SHAPE, counts) == 3 * 6240


def test_text_projection_terms_appear_only_when_text_width_differs():
    counts = count_tokens(SPANS, LOSS_MASK)
    wider = ModelShape(hidden=4, ffn_hidden=6, layers=2, text_embed_dim=8, padded_vocab=16, patch_dim=12)
    extra = 2 * 5 * 8 * 4 + 2 * 3 * 4 * 8  # in_proj on 5 text tokens, proj on 3 loss positions
    lm_head_growth = 2 * 3 * (8 - 4) * 16
    assert forward_flops(wider, counts) - forward_flops(SHAPE, counts) == extra + lm_head_growth


def test_mfu_peak_table_and_when_mfu_is_not_claimed():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA B200") == 2250.0
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090") is None
    assert mfu_peak_tflops("cpu", "bf16") is None
    assert mfu_peak_tflops("cuda", "fp8") is None
