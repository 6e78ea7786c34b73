"""Prefix-LM attention for packed sequences without an S x S mask (the "fused" path).

Per sample, laid out [image tokens][text tokens], the prefix-LM mask splits into two mask-free
variable-length attentions:
  1. image queries over the sample's image keys, bidirectional;
  2. text queries over ALL keys of the sample, causal aligned to the bottom-right corner
     (text query i sees the n_img image keys and text keys 0..i).
Both run on concatenated token streams described by cumulative lengths (cu_seqlens), so memory is
linear in the sequence length. `tests/model/test_varlen_attention.py` proves the decomposition
equals the dense mask (`genlip_megatron.hf.masks.prefix_lm_mask`).

On CUDA the two run as torch's flash-attention `varlen_attn` (bf16/fp16). On CPU, where no varlen
kernel exists, `prefix_lm_block_attention` lays the K samples out as a padded [K, L_max] batch (L_max =
the longest sample, not the pack) and runs ONE dense SDPA call over it with each sample's small
prefix-LM block mask: the work is K x L_max^2 instead of the pack's S^2, at dense-kernel speed
and without a Python loop over samples. Samples of very different lengths go to separate batches
(length buckets by powers of two), so one long sample does not pad every short one to its length. `varlen_attention_reference` (one SDPA per segment) is the CPU stand-in
of the CUDA kernel, so tests run the GPU decomposition on CPU.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch


def prefix_lm_spans(segment_ids: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """Locate every sample of a packed micro-batch.

    Args:
        segment_ids: int [B, S], -1 at padding. is_image: bool [B, S].
    Returns:
        int64 [K, 3]: (sample_start, text_start, sample_end) for each of the K samples, as offsets
        into the flattened [B * S] token stream.
    """
    b, s = segment_ids.shape
    seg = segment_ids.reshape(-1)
    valid = seg >= 0
    pos = torch.arange(b * s, device=seg.device)
    row_start = pos % s == 0
    row_end = pos % s == s - 1
    prev_differs = torch.ones_like(valid)
    prev_differs[1:] = seg[1:] != seg[:-1]
    next_differs = torch.ones_like(valid)
    next_differs[:-1] = seg[:-1] != seg[1:]
    starts = pos[valid & (row_start | prev_differs)]
    ends = pos[valid & (row_end | next_differs)] + 1
    image_cumsum = torch.nn.functional.pad(is_image.reshape(-1).long().cumsum(0), (1, 0))
    # Image tokens come first in a sample, so its text starts after its image count.
    text_starts = starts + (image_cumsum[ends] - image_cumsum[starts])
    return torch.stack([starts, text_starts, ends], dim=1)


def _ranges(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Concatenate arange(start, end) for every pair, vectorised."""
    lengths = ends - starts
    offsets = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
    return torch.arange(int(lengths.sum()), device=starts.device) + offsets


def _cu(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def varlen_attention_reference(q, k, v, cu_q, cu_k, causal: bool, scale: float) -> torch.Tensor:
    """CPU kernel: [T, h, d] streams, one SDPA call per segment; causal is bottom-right aligned."""
    out = torch.empty_like(q)
    for i in range(cu_q.numel() - 1):
        q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        if q1 == q0:
            continue
        qs, ks, vs = (t.transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
        mask = None
        if causal:
            n_q, n_k = q1 - q0, k1 - k0
            mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
        out[q0:q1] = o.transpose(0, 1)
    return out


# torch's varlen_attn took `scale` (softmax scale) and `window_size` (causal as (-1, 0)) in 2.11;
# before, it had neither (2.9, 2.10: is_causal only, default scale). The Dockerfile's base ships it.
VARLEN_MIN_TORCH = "2.11"


@functools.cache
def varlen_api_problem() -> str | None:
    """Why this torch cannot run the fused path's CUDA kernel, in one line; None when it can."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return (f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn: "
                f"model.attention=fused on CUDA needs torch >= {VARLEN_MIN_TORCH}")
    missing = [p for p in ("scale", "window_size") if p not in inspect.signature(varlen_attn).parameters]
    if missing:
        return (f"torch {torch.__version__}'s varlen_attn takes no {' or '.join(missing)}: "
                f"model.attention=fused on CUDA needs torch >= {VARLEN_MIN_TORCH}")
    return None


def varlen_attention_cuda(q, k, v, cu_q, cu_k, causal: bool, scale: float) -> torch.Tensor:
    """GPU kernel: flash-attention varlen; window (-1, 0) is causal, bottom-right aligned."""
    problem = varlen_api_problem()
    if problem:
        raise RuntimeError(problem)
    from torch.nn.attention.varlen import varlen_attn

    max_q = int((cu_q[1:] - cu_q[:-1]).max())
    max_k = int((cu_k[1:] - cu_k[:-1]).max())
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale,
                       window_size=(-1, 0) if causal else (-1, -1))


@dataclass(frozen=True)
class SampleBlocks:
    """The samples of a pack as padded dense batches, one per length bucket (CPU attention layout).

    Samples are bucketed by ceil(log2(length)), so a bucket pads its samples to at most twice their
    length; a pack of similar samples (the usual case) is ONE bucket. Bucket g holds K_g samples as
    rows of L_g slots (L_g = its longest sample). Token indices address the flattened tokens in the
    order the caller holds them: row-major [B * S] (rows=1 for a single stream), or sequence-major
    [S * B] (megatron-core's [S, B, ...] activations flattened without a transpose).

    gathers[g]: int64 [K_g * L_g], the token at slot j of row i (i * L_g + j); padding slots repeat
        the sample's first token (nobody attends to them; their outputs are dropped).
    allowed[g]: bool [K_g, 1, L_g, L_g], query slot may see key slot: the sample's image keys, and its
        text keys causally; padding slots are seen by nobody. A padding query still sees the sample's
        keys, so no softmax row is empty.
    token_slots[g]: int64 [num_tokens], each token's slot within bucket g (0 for a token with none there);
    tokens_elsewhere[g]: int64, the tokens with no slot in bucket g (other buckets', pack padding).
    slot_tokens: int64 [sum of K_g * L_g], the gathers of all buckets concatenated.
    padding_slots: int64, the slots (of all buckets concatenated) that hold no sample's token.
    scatter: int64 [num_tokens], each token's slot in the concatenation of all buckets' slots; tokens
        of no sample (pack padding) read slot 0 (their output is never used: no loss, nobody reads it).
    Both directions are gathers, and so are their gradients (`_GatherRows`): a token has exactly one
    valid slot, and padding slots and pack padding carry no gradient.
    """

    gathers: tuple
    allowed: tuple
    token_slots: tuple
    tokens_elsewhere: tuple
    slot_tokens: torch.Tensor
    padding_slots: torch.Tensor
    scatter: torch.Tensor


def sample_blocks(spans: torch.Tensor, num_tokens: int, rows: int = 1, sequence_major: bool = False
                  ) -> SampleBlocks:
    """The padded per-sample layout of a pack of `num_tokens` flattened tokens (spans: [K, 3], offsets
    into the row-major [rows * S] stream). With sequence_major, token indices address the [S * rows]
    flattening instead (token (b, s) at s * rows + b)."""
    starts, text_starts, ends = spans.unbind(1)
    lengths = ends - starts
    device = spans.device
    scatter = torch.zeros(num_tokens, dtype=torch.long, device=device)
    in_sample = torch.zeros(num_tokens, dtype=torch.bool, device=device)
    buckets = torch.ceil(torch.log2(lengths.clamp(min=1).double())).long()
    gathers, allowed, valid_slots, offset = [], [], [], 0
    for bucket in torch.unique(buckets).tolist():
        members = torch.nonzero(buckets == bucket).squeeze(1)
        start, length, images = starts[members], lengths[members], (text_starts - starts)[members]
        slots = torch.arange(int(length.max()), device=device)
        valid = slots[None, :] < length[:, None]
        gather = torch.where(valid, start[:, None] + slots[None, :], start[:, None]).reshape(-1)
        flat_valid = valid.reshape(-1)
        scatter[gather[flat_valid]] = offset + torch.arange(len(gather), device=device)[flat_valid]
        in_sample[gather[flat_valid]] = True
        image_key = slots[None, None, :] < images[:, None, None]  # [K_g, 1, L_g]
        causal = slots[None, :, None] >= slots[None, None, :]  # [1, L_g, L_g]
        gathers.append(gather)
        allowed.append(((image_key | causal) & valid[:, None, :]).unsqueeze(1))
        valid_slots.append(flat_valid)
        offset += len(gather)
    if sequence_major:
        seq = num_tokens // rows
        gathers = [(g % seq) * rows + g // seq for g in gathers]
        scatter = scatter.view(rows, seq).t().reshape(-1)
        in_sample = in_sample.view(rows, seq).t().reshape(-1)
    token_slots, tokens_elsewhere, offset = [], [], 0
    for gather in gathers:
        inside = in_sample & (scatter >= offset) & (scatter < offset + len(gather))
        token_slots.append(torch.where(inside, scatter - offset, 0))
        tokens_elsewhere.append(torch.nonzero(~inside).squeeze(1))
        offset += len(gather)
    padding_slots = torch.nonzero(~torch.cat(valid_slots)).squeeze(1)
    return SampleBlocks(tuple(gathers), tuple(allowed), tuple(token_slots), tuple(tokens_elsewhere),
                        torch.cat(gathers), padding_slots, scatter)


class _LastLayout:
    """The layout of the last spans tensor seen: every layer of a forward (and its recompute and
    backward) attends over the same pack, so the index work is done once per micro-batch."""

    key: tuple | None = None
    layout: SampleBlocks | None = None

    @classmethod
    def of(cls, spans: torch.Tensor, num_tokens: int, rows: int, sequence_major: bool) -> SampleBlocks:
        key = (spans, spans._version, num_tokens, rows, sequence_major)
        if cls.key is None or cls.key[0] is not spans or cls.key[1:] != key[1:]:
            cls.key, cls.layout = key, sample_blocks(spans, num_tokens, rows, sequence_major)
        return cls.layout


class _GatherRows(torch.autograd.Function):
    """out = x[index] along dim 0, where `inverse` gives each row of x the one row of out that holds
    it, except the rows `unheld` of x, which get none; every other row of out that repeats a row of x
    carries zero gradient. So the gradient is a gather too, x.grad = out.grad[inverse] with the
    unheld rows zeroed (a few), instead of index_select's zero-filled serial index_add."""

    @staticmethod
    def forward(ctx, x, index, inverse, unheld):
        ctx.save_for_backward(inverse, unheld)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        inverse, unheld = ctx.saved_tensors
        return grad.index_select(0, inverse).index_fill_(0, unheld, 0.0), None, None, None


def prefix_lm_block_attention(q, k, v, spans, scale: float, rows: int = 1, sequence_major: bool = False
                              ) -> torch.Tensor:
    """Prefix-LM attention of flattened tokens as one SDPA call per length bucket of padded samples
    (the CPU path; one call for a pack of similar samples).

    Args and result as `prefix_lm_varlen_attention`, except that pack padding positions (tokens of no
    sample) hold an arbitrary finite value instead of zero and pass no gradient back, and that with
    sequence_major q, k, v (and the result) hold the tokens in [S * rows] order (megatron-core's
    [S, B, h, d] flattened: no transposes).
    """
    tokens, heads, dim = q.shape
    layout = _LastLayout.of(spans, tokens, rows, sequence_major)
    outputs = []
    for gather, allowed, token_slots, elsewhere in zip(layout.gathers, layout.allowed, layout.token_slots,
                                                       layout.tokens_elsewhere):
        count, width = allowed.shape[0], allowed.shape[-1]
        qg, kg, vg = (_GatherRows.apply(t, gather, token_slots, elsewhere)
                      .view(count, width, heads, dim).transpose(1, 2) for t in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, attn_mask=allowed, scale=scale)
        outputs.append(o.transpose(1, 2).reshape(count * width, heads, dim))
    flat = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return _GatherRows.apply(flat, layout.scatter, layout.slot_tokens, layout.padding_slots)


def prefix_lm_varlen_attention(q, k, v, spans, scale: float, kernel=None) -> torch.Tensor:
    """Prefix-LM attention of flattened tokens.

    Args:
        q, k, v: [T, h, d] with T = B * S (flattened packed micro-batch).
        spans: int64 [K, 3] from `prefix_lm_spans`.
        kernel: the varlen kernel of the two-attention decomposition; None picks flash attention on
            CUDA and, on CPU, the batched block path (`prefix_lm_block_attention`) instead.
    Returns:
        [T, h, d]; at pack padding positions zero (varlen kernels) or an arbitrary finite value (CPU
        block path): nothing reads them and they carry no loss.
    """
    if kernel is None:
        if not q.is_cuda:
            return prefix_lm_block_attention(q, k, v, spans, scale)
        kernel = varlen_attention_cuda
    starts, text_starts, ends = spans.unbind(1)
    image_idx = _ranges(starts, text_starts)
    text_idx = _ranges(text_starts, ends)
    sample_idx = _ranges(starts, ends)
    out = torch.zeros_like(q)
    cu_image = _cu(text_starts - starts)
    out[image_idx] = kernel(q[image_idx], k[image_idx], v[image_idx], cu_image, cu_image,
                            False, scale)
    out[text_idx] = kernel(q[text_idx], k[sample_idx], v[sample_idx], _cu(ends - text_starts),
                           _cu(ends - starts), True, scale)
    return out

