"""Context-parallel attention (model/context_attention.py): a rank's queries against the gathered keys
and values equal the dense prefix-LM mask's rows of those queries, outputs and gradients, for the CPU
block path and for the CUDA segment decomposition (run with the CPU reference kernel), on the splits
data/context_split.py makes and on arbitrary query subsets."""

import math
from functools import partial

import pytest
import torch
from packed_batch import packed_batch

from genlip_megatron.data.context_split import context_positions
from genlip_megatron.hf.masks import prefix_lm_allowed
from genlip_megatron.model.context_attention import prefix_lm_context_attention
from genlip_megatron.model.varlen_attention import prefix_lm_spans, varlen_attention_reference


def _no_empty_calls(q, k, v, cu_q, cu_k, causal, scale):
    """The reference kernel, refusing what flash varlen cannot take: no query at all."""
    assert q.shape[0] > 0, "a varlen kernel call without queries"
    return varlen_attention_reference(q, k, v, cu_q, cu_k, causal, scale)


PATHS = {"cpu_blocks": prefix_lm_context_attention,
         "varlen_decomposition": partial(prefix_lm_context_attention, kernel=_no_empty_calls)}
ROWS = [[(3, 4, 9), (2, 3, 8), (1, 1, 2)], [(4, 4, 12), (3, 3, 7)]]  # (4, 4, 12): 28 tokens > S / 2
SEQ, HEADS, DIM = 48, 3, 8


def _inputs():
    b = packed_batch(ROWS, seq_length=SEQ, patch_dim=12, vocab=50)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(len(ROWS) * SEQ, HEADS, DIM, generator=g) for _ in range(3))
    return b, prefix_lm_spans(b["segment_ids"], b["is_image"]), q, k, v


def _dense(b, q, k, v):
    allowed = prefix_lm_allowed(b["segment_ids"], b["is_image"])
    q, k, v = (t.view(len(ROWS), SEQ, HEADS, DIM).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1 / math.sqrt(DIM))
    return out.transpose(1, 2).reshape(-1, HEADS, DIM)


def _subsets(spans, b):
    yield from context_positions(spans, len(ROWS), SEQ, 2, 3)  # the CP2 split, 3 chunks per rank
    yield from context_positions(spans, len(ROWS), SEQ, 4, 2)
    text = ((b["segment_ids"] >= 0) & ~b["is_image"]).reshape(-1)
    yield text.nonzero().squeeze(1)  # a rank holding captions only: no image query
    yield text.nonzero().squeeze(1)[:5]  # a few caption tokens of one sample
    g = torch.Generator().manual_seed(3)
    yield torch.randperm(len(ROWS) * SEQ, generator=g)[:30].sort().values  # scattered single positions
    yield torch.arange(len(ROWS) * SEQ)  # every position (CP = 1)


@pytest.mark.parametrize("path", list(PATHS))
def test_query_subsets_see_exactly_their_dense_mask_rows(path):
    b, spans, q, k, v = _inputs()
    real = (b["segment_ids"] >= 0).reshape(-1)
    for queries in _subsets(spans, b):
        qs, ks, vs = (t.clone().requires_grad_(True) for t in (q[queries], k, v))
        out = PATHS[path](qs, ks, vs, spans, queries, 1 / math.sqrt(DIM))
        grad = torch.randn_like(out) * real[queries][:, None, None]
        out.backward(grad)
        qd, kd, vd = (t.clone().requires_grad_(True) for t in (q, k, v))
        dense = _dense(b, qd, kd, vd)
        full_grad = torch.zeros_like(dense)
        full_grad[queries] = grad
        dense.backward(full_grad)
        keep = real[queries]
        assert (out - dense[queries])[keep].abs().max() < 5e-6
        assert torch.isfinite(out).all()
        assert (qs.grad - qd.grad[queries])[keep].abs().max() < 5e-6
        assert (ks.grad - kd.grad).abs().max() < 5e-6 and (vs.grad - vd.grad).abs().max() < 5e-6


def test_the_cpu_layout_is_built_once_per_forward_and_again_for_another_pack():
    from genlip_megatron.model.context_attention import ContextParallelParams, context_blocks

    b, spans, q, k, v = _inputs()
    positions = context_positions(spans, len(ROWS), SEQ, 2, 3)
    params = ContextParallelParams.build(positions, rank=1, group=None)
    first = params.blocks(spans)
    assert params.blocks(spans) is first  # every layer of the forward reuses it
    again = context_blocks(spans, positions[1])
    assert torch.equal(first.scatter, again.scatter) and len(first.allowed) == len(again.allowed)
    assert all(torch.equal(a, b) for a, b in zip(first.allowed + first.q_gathers, again.allowed + again.q_gathers))
    other = spans.clone()
    assert params.blocks(other) is not first
    queries = positions[1]
    out = prefix_lm_context_attention(q[queries], k, v, spans, queries, 0.3, blocks=params.blocks(spans))
    assert torch.equal(out, prefix_lm_context_attention(q[queries], k, v, spans, queries, 0.3))
