"""Prefix-LM attention under context parallelism: this rank's queries, the whole sequence's keys.

Each CP rank holds a subset of every packed sequence's positions (data/context_split.py: a few
chunks, sorted). Attention keeps its queries and all-gathers keys and values over the CP group
(megatron-core's sequence-parallel gather on the CP group: the backward reduce-scatters the key and
value gradients back to the ranks that own those positions), then reorders them into the sequence
order, so every query sees exactly the keys the prefix-LM mask allows, wherever they were computed.

The mask in terms of the gathered stream, per sample (start, text start, end):
  - image queries of the sample (any subset) see the sample's image keys, bidirectionally: one
    mask-free segment per sample;
  - a run of text queries at consecutive positions [a, b) sees keys [start, b), causal aligned to
    the bottom-right corner (query a + i sees keys up to a + i): one segment per run. A sample's
    text splits into several runs when other ranks hold positions in between.
With all positions on one rank this is exactly the two-attention decomposition of
model/varlen_attention.py, and the segments run through the same kernel on CUDA (flash-attention
varlen). On CPU, as there, the samples become padded batches, one SDPA call per size bucket
(`context_block_attention`): a block holds the sample's queries on this rank against all its keys,
with the prefix-LM mask written in terms of each query's offset in its sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

from genlip_megatron.model.varlen_attention import _cu, _ranges, varlen_attention_cuda


@dataclass
class ContextParallelParams(PackedSeqParams):
    """What the core attention needs to know about the CP split, passed through megatron-core's
    `packed_seq_params` argument (which reaches the core attention unchanged, also under
    recompute). `qkv_format` stays "sbhd": the tensors are ordinary [S/cp, B, h, d].

    positions: int64 [cp, T'] flattened positions of every rank's tokens (T' = B * S/cp);
    order: int64 [cp * T'] the row of the gathered stream that holds each position (positions'
    inverse permutation); rank: this rank in the CP group (`cp_group`).
    """

    positions: torch.Tensor = None
    order: torch.Tensor = None
    rank: int = 0
    _blocks: tuple = field(default=None, repr=False)  # (spans, QueryBlocks) of the last call

    @classmethod
    def build(cls, positions: torch.Tensor, rank: int, group) -> ContextParallelParams:
        flat = positions.reshape(-1)
        order = torch.empty_like(flat)
        order[flat] = torch.arange(flat.numel(), device=flat.device)
        return cls(qkv_format="sbhd", positions=positions, order=order, rank=rank, cp_group=group)

    @property
    def queries(self) -> torch.Tensor:
        """int64 [T']: the positions of this rank's queries (ascending)."""
        return self.positions[self.rank]

    def blocks(self, spans: torch.Tensor) -> QueryBlocks:
        """`context_blocks(spans, self.queries)`, computed once for all layers of a forward (and
        their recompute and backward): the same params and spans reach every layer."""
        if self._blocks is None or self._blocks[0] is not spans:
            self._blocks = (spans, context_blocks(spans, self.queries))
        return self._blocks[1]


def gather_keys_values(key: torch.Tensor, value: torch.Tensor, params: ContextParallelParams):
    """[T', h, d] local keys and values -> [T, h, d] of the whole micro-batch, in sequence order.
    One all-gather (keys and values together); backward: one reduce-scatter to the owners."""
    d = key.shape[-1]
    both = torch.cat([key, value], dim=-1)
    gathered = gather_from_sequence_parallel_region(both, tensor_parallel_output_grad=True,
                                                    group=params.cp_group)  # [cp * T', h, 2d], by rank
    ordered = gathered.index_select(0, params.order)
    return ordered[..., :d], ordered[..., d:]


@dataclass(frozen=True)
class QueryBlocks:
    """The padded per-sample layout of a query subset (the CPU path), one dense batch per bucket.

    A block is one sample that holds at least one of the queries: its queries on this rank against all
    its keys. Blocks are bucketed by (ceil log2 of their query count, ceil log2 of their key count), so
    a bucket pads its blocks to at most twice their size either way; bucket g holds K_g blocks of Lq_g
    query slots and Lk_g key slots.

    q_gathers[g]: int64 [K_g * Lq_g], the query (index into `queries`) of each slot; padding slots
        repeat the block's first query (their outputs are dropped).
    k_gathers[g]: int64 [K_g * Lk_g], the position of each key slot; padding slots repeat the first key.
    allowed[g]: bool [K_g, 1, Lq_g, Lk_g]: image keys for every query, and text keys up to the query's
        own offset in its sample; padding key slots for nobody (no row is empty: key slot 0 is an
        image key, or the sample's first text token, which every query of the sample sees).
    scatter: int64 [T'], each query's slot in the concatenation of all buckets' query slots; queries
        of no sample (pack padding) read slot 0 (nothing reads their output).
    """

    q_gathers: tuple
    k_gathers: tuple
    allowed: tuple
    scatter: torch.Tensor


def context_blocks(spans: torch.Tensor, queries: torch.Tensor) -> QueryBlocks:
    """The QueryBlocks of `queries` (int64 [T'], ascending flattened positions) in a pack of `spans`."""
    starts, text_starts, ends = spans.T.contiguous().unbind(0)  # contiguous rows for searchsorted
    first, past = torch.searchsorted(queries, starts), torch.searchsorted(queries, ends)
    keep = past > first
    starts, text_starts, ends, first, past = (t[keep] for t in (starts, text_starts, ends, first, past))
    q_len, k_len = past - first, ends - starts
    device = spans.device
    scatter = torch.zeros(len(queries), dtype=torch.long, device=device)
    log2 = [torch.ceil(torch.log2(n.clamp(min=1).double())).long() for n in (q_len, k_len)]
    buckets = log2[0] * 64 + log2[1]
    q_gathers, k_gathers, allowed, offset = [], [], [], 0
    for bucket in torch.unique(buckets).tolist():
        rows = torch.nonzero(buckets == bucket).squeeze(1)
        start, n_q, n_k, n_img, head = starts[rows], q_len[rows], k_len[rows], (text_starts - starts)[rows], first[rows]
        q_slots = torch.arange(int(n_q.max()), device=device)
        k_slots = torch.arange(int(n_k.max()), device=device)
        q_valid = q_slots[None, :] < n_q[:, None]
        q_gather = torch.where(q_valid, head[:, None] + q_slots[None, :], head[:, None])
        q_offset = queries[q_gather] - start[:, None]  # [K_g, Lq_g]
        k_valid = k_slots[None, :] < n_k[:, None]
        k_gathers.append(torch.where(k_valid, start[:, None] + k_slots[None, :], start[:, None]).reshape(-1))
        image_key = k_slots[None, None, :] < n_img[:, None, None]
        earlier = k_slots[None, None, :] <= q_offset[:, :, None]
        allowed.append(((image_key | earlier) & k_valid[:, None, :]).unsqueeze(1))
        flat_valid = q_valid.reshape(-1)
        q_gathers.append(q_gather.reshape(-1))
        scatter[q_gathers[-1][flat_valid]] = offset + torch.arange(q_gather.numel(), device=device)[flat_valid]
        offset += q_gather.numel()
    return QueryBlocks(tuple(q_gathers), tuple(k_gathers), tuple(allowed), scatter)


def context_block_attention(q, k, v, spans, queries, scale: float, blocks=None) -> torch.Tensor:
    """Prefix-LM attention of a query subset as one SDPA call per bucket of padded samples (CPU path).
    Args and result as `prefix_lm_context_attention` (pack padding holds an arbitrary finite value);
    blocks: `context_blocks(spans, queries)` when the caller has it already."""
    _, heads, dim = q.shape
    blocks = blocks if blocks is not None else context_blocks(spans, queries)
    if not blocks.allowed:  # this rank holds only pack padding
        return q * 0
    outputs = []
    for q_gather, k_gather, allowed in zip(blocks.q_gathers, blocks.k_gathers, blocks.allowed):
        rows, q_width, k_width = allowed.shape[0], allowed.shape[2], allowed.shape[3]
        qb = q.index_select(0, q_gather).view(rows, q_width, heads, dim).transpose(1, 2)
        kb, vb = (t.index_select(0, k_gather).view(rows, k_width, heads, dim).transpose(1, 2) for t in (k, v))
        o = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed, scale=scale)
        outputs.append(o.transpose(1, 2).reshape(rows * q_width, heads, dim))
    flat = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return flat.index_select(0, blocks.scatter)


def prefix_lm_context_attention(q, k, v, spans, queries, scale: float, kernel=None, blocks=None) -> torch.Tensor:
    """Prefix-LM attention of a subset of the positions.

    Args:
        q: [T', h, d] queries at the flattened positions `queries` (int64 [T'], ascending).
        k, v: [T, h, d] keys and values of every position, in sequence order.
        spans: int64 [K, 3] (start, text start, end) of every sample.
        kernel: a varlen kernel for the segment decomposition; None picks flash attention on CUDA
            and the padded-block SDPA path on CPU.
        blocks: the CPU path's `context_blocks(spans, queries)`, when the caller has it already.
    Returns:
        [T', h, d]; at pack padding positions zero (varlen kernels) or an arbitrary finite value (CPU).
    """
    if kernel is None:
        if not q.is_cuda:
            return context_block_attention(q, k, v, spans, queries, scale, blocks)
        kernel = varlen_attention_cuda
    starts, text_starts, ends = spans.T.contiguous().unbind(0)  # contiguous rows for searchsorted
    first_image = torch.searchsorted(queries, starts)
    first_text = torch.searchsorted(queries, text_starts)
    past_end = torch.searchsorted(queries, ends)
    out = torch.zeros_like(q)
    # image queries: every image query of a sample sees the sample's image keys
    image_q, image_k = _ranges(first_image, first_text), _ranges(starts, text_starts)
    if image_q.numel():  # a rank may hold no image query (only captions or padding): no empty kernel call
        out[image_q] = kernel(q[image_q], k[image_k], v[image_k], _cu(first_text - first_image),
                              _cu(text_starts - starts), False, scale)
    # text queries: one causal segment per run of consecutive positions inside one sample's text
    text_q = _ranges(first_text, past_end)
    if text_q.numel():
        where = queries[text_q]
        sample = torch.repeat_interleave(torch.arange(len(spans), device=q.device), past_end - first_text)
        breaks = torch.ones_like(where, dtype=torch.bool)
        breaks[1:] = (where[1:] != where[:-1] + 1) | (sample[1:] != sample[:-1])
        run_first = breaks.nonzero().squeeze(1)
        run_last = torch.cat([run_first[1:], run_first.new_tensor([len(where)])]) - 1
        key_start, key_end = starts[sample[run_first]], where[run_last] + 1
        keys = _ranges(key_start, key_end)
        out[text_q] = kernel(q[text_q], k[keys], v[keys], _cu(run_last + 1 - run_first),
                             _cu(key_end - key_start), True, scale)
    return out
