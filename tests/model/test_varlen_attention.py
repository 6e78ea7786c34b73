"""The fused prefix-LM path equals the dense S x S mask: the CPU block path (one SDPA over padded
samples) and the GPU decomposition (two varlen attentions, run here with the CPU reference kernel)."""

import math
from functools import partial

import pytest
import torch
from packed_batch import packed_batch

from genlip_megatron.hf.masks import prefix_lm_allowed
from genlip_megatron.model.varlen_attention import (
    prefix_lm_block_attention,
    prefix_lm_spans,
    prefix_lm_varlen_attention,
    sample_blocks,
    varlen_attention_reference,
)


def _sequence_major_blocks(q, k, v, spans, scale):
    """The CPU block path on tokens held [S, B] (megatron-core's order), mapped back to [B, S]."""
    rows = len(ROWS)
    to_sb = [t.view(rows, SEQ, *t.shape[1:]).transpose(0, 1).flatten(0, 1) for t in (q, k, v)]
    out = prefix_lm_block_attention(*to_sb, spans, scale, rows=rows, sequence_major=True)
    return out.view(SEQ, rows, *out.shape[1:]).transpose(0, 1).flatten(0, 1)


PATHS = {"cpu_blocks": prefix_lm_varlen_attention,
         "cpu_blocks_sequence_major": _sequence_major_blocks,
         "varlen_decomposition": partial(prefix_lm_varlen_attention, kernel=varlen_attention_reference)}

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


@pytest.mark.parametrize("path", list(PATHS))
def test_fused_path_equals_dense_mask_on_every_real_token(path):
    b = _batch()
    heads, dim = 3, 8
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(ROWS), heads, SEQ, dim, generator=g) for _ in range(3))
    allowed = prefix_lm_allowed(b["segment_ids"], b["is_image"])
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    flat = [t.permute(0, 2, 1, 3).reshape(-1, heads, dim) for t in (q, k, v)]
    spans = prefix_lm_spans(b["segment_ids"], b["is_image"])
    fused = PATHS[path](*flat, spans, 1.0 / math.sqrt(dim))
    fused = fused.reshape(len(ROWS), SEQ, heads, dim).permute(0, 2, 1, 3)
    real = (b["segment_ids"] >= 0)[:, None, :, None].expand_as(dense)
    assert (fused - dense)[real].abs().max() < 1e-6
    # Padding rows: nothing attends to them and they carry no loss; the varlen kernels leave them zero.
    assert torch.isfinite(fused).all()
    if path == "varlen_decomposition":
        assert fused[~real].abs().max() == 0


@pytest.mark.parametrize("path", list(PATHS))
def test_fused_path_gradients_equal_dense_mask_gradients(path):
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
    fused = PATHS[path](*flat, spans, 1.0 / math.sqrt(dim))
    # Padding outputs carry no loss in the model (loss_mask 0, nobody attends to them): same here.
    (fused.reshape(len(ROWS), SEQ, heads, dim).permute(0, 2, 1, 3) * real).square().sum().backward()
    for d, f in zip(dense_in, fused_in):
        assert (d.grad * real - f.grad * real).abs().max() < 1e-5


def test_sample_blocks_pad_to_the_longest_sample_with_a_prefix_lm_block_mask():
    b = _batch()
    tokens = len(ROWS) * SEQ
    layout = sample_blocks(prefix_lm_spans(b["segment_ids"], b["is_image"]), tokens)
    # lengths 21, 14, 3, 28, 16, 7 fall in the buckets (16, 32], (8, 16], (2, 4], (16, 32], (8, 16], (4, 8]
    widths = [a.shape[-1] for a in layout.allowed]
    assert widths == [3, 7, 16, 28] and [a.shape[0] for a in layout.allowed] == [1, 1, 2, 2]
    small, _, mid, large = (g.reshape(a.shape[0], -1) for g, a in zip(layout.gathers, layout.allowed))
    # sample 2 of row 0: one image token, then 2 text tokens at flat positions 35, 36, 37
    assert small.tolist() == [[35, 36, 37]]
    assert layout.allowed[0][0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert mid[0, :14].tolist() == list(range(21, 35)) and (mid[0, 14:] == 21).all()  # padding: the start
    assert mid[1].tolist() == list(range(SEQ + 28, SEQ + 44))
    # sample 0 (12 image tokens): image queries see all image keys and no text key
    allowed = layout.allowed[3][0, 0]
    assert allowed[:12, :12].all() and not allowed[:12, 12:].any()
    assert not layout.allowed[3][0, 0, :, 21:].any()  # 21 tokens of 28 slots: nobody sees padding
    # every real token is gathered exactly once and scattered back to itself
    flat = torch.cat(layout.gathers)
    real = torch.cat([(torch.arange(a.shape[-1])[None] < lengths[:, None]).reshape(-1) for a, lengths in zip(
        layout.allowed, (torch.tensor([3]), torch.tensor([7]), torch.tensor([14, 16]), torch.tensor([21, 28])))])
    assert sorted(flat[real].tolist()) == sorted(set(flat[real].tolist())) and int(real.sum()) == 89
    assert torch.equal(flat[layout.scatter[flat[real]]], flat[real])
    assert (layout.scatter[38:SEQ] == 0).all()  # pack padding of row 0 reads slot 0
    # the gradient maps: slot -> token where valid, and per bucket token -> its slot there
    assert torch.equal(layout.padding_slots, torch.nonzero(~real).squeeze(1)) and torch.equal(layout.slot_tokens, flat)
    held = 0
    for gather, token_slots, elsewhere in zip(layout.gathers, layout.token_slots, layout.tokens_elsewhere):
        inside = torch.ones(tokens, dtype=torch.bool)
        inside[elsewhere] = False
        assert torch.equal(gather[token_slots[inside]], torch.nonzero(inside).squeeze(1))
        held += int(inside.sum())
        assert set(range(38, SEQ)) <= set(elsewhere.tolist())  # pack padding of row 0 has no slot
    assert held == 89
