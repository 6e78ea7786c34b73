"""The fused prefix-LM path (two mask-free varlen attentions) equals the dense S x S mask."""

import math

import torch
from packed_batch import packed_batch

from genlip_megatron.hf.masks import prefix_lm_allowed
from genlip_megatron.model.varlen_attention import prefix_lm_spans, prefix_lm_varlen_attention

ROWS = [[(3, 4, 9), (2, 3, 8), (1, 1, 2)], [(4, 4, 12), (3, 3, 7)], [(2, 2, 3)]]
SEQ = 48


def _batch():
    return packed_batch(ROWS, seq_length=SEQ, patch_dim=12, vocab=50)


def test_spans_locate_every_sample_and_its_first_text_token():
    b = _batch()
    spans = prefix_lm_spans(b["segment_ids"], b["is_image"]).tolist()
    expected = []
    for r, samples in enumerate(ROWS):
        s = r * SEQ
        for gh, gw, n_text in samples:
            expected.append([s, s + gh * gw, s + gh * gw + n_text])
            s += gh * gw + n_text
    assert spans == expected


def test_varlen_decomposition_equals_dense_mask_on_every_real_token():
    b = _batch()
    heads, dim = 3, 8
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(ROWS), heads, SEQ, dim, generator=g) for _ in range(3))
    allowed = prefix_lm_allowed(b["segment_ids"], b["is_image"])
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    flat = [t.permute(0, 2, 1, 3).reshape(-1, heads, dim) for t in (q, k, v)]
    spans = prefix_lm_spans(b["segment_ids"], b["is_image"])
    fused = prefix_lm_varlen_attention(*flat, spans, 1.0 / math.sqrt(dim))
    fused = fused.reshape(len(ROWS), SEQ, heads, dim).permute(0, 2, 1, 3)
    real = (b["segment_ids"] >= 0)[:, None, :, None].expand_as(dense)
    assert (fused - dense)[real].abs().max() < 1e-6
    # Padding rows are zero in the fused path: nothing attends to them and they carry no loss.
    assert fused[~real].abs().max() == 0


def test_varlen_gradients_equal_dense_mask_gradients():
    b = _batch()
    heads, dim = 2, 4
    g = torch.Generator().manual_seed(2)
    base = [torch.randn(len(ROWS), heads, SEQ, dim, generator=g) for _ in range(3)]
    real = (b["segment_ids"] >= 0)[:, None, :, None]
    allowed = prefix_lm_allowed(b["segment_ids"], b["is_image"])
    dense_in = [t.clone().requires_grad_() for t in base]
    out = torch.nn.functional.scaled_dot_product_attention(*dense_in, attn_mask=allowed)
    (out * real).square().sum().backward()
    fused_in = [t.clone().requires_grad_() for t in base]
    flat = [t.permute(0, 2, 1, 3).reshape(-1, heads, dim) for t in fused_in]
    spans = prefix_lm_spans(b["segment_ids"], b["is_image"])
    fused = prefix_lm_varlen_attention(*flat, spans, 1.0 / math.sqrt(dim))
    fused.reshape(len(ROWS), SEQ, heads, dim).permute(0, 2, 1, 3).square().sum().backward()
    for d, f in zip(dense_in, fused_in):
        assert (d.grad * real - f.grad * real).abs().max() < 1e-5
