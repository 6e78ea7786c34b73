"""How a packed micro-batch is divided among context-parallel ranks (docs/batch.md, docs/scaling.md).

Context parallelism (CP = N) gives each rank S/N of every packed sequence's positions as its
queries; keys and values are all-gathered over the CP group (model/context_attention.py). The
split must balance two things: tokens (every rank runs the same per-token work, and megatron's
pipeline schedules send [S/N, B, H] between stages) and attention work (the prefix-LM mask makes a
query's cost the number of keys it sees: n_img for an image patch, n_img + i + 1 for the i-th text
token of its sample, nothing for padding).

The split: each sequence is cut into N x c equal chunks (c = `parallel.context_parallel_chunks`);
every rank takes exactly c chunks of every sequence, chosen greedily (largest attention work first,
to the least-loaded rank that still has room in that sequence; loads accumulate over the
micro-batch's sequences) and then improved by swaps between the most- and the least-loaded rank.
A sample may cross chunks and ranks freely: a query only needs its sample's keys, which every rank
gathers. Integer arithmetic on the same batch: every CP rank computes the same split, with no
communication.

A rank's queries are kept in sequence order (its chunks sorted by position, sequence by sequence),
so `ContextShard` is a micro-batch of B sequences of S/N tokens with the same fields as a
PackedBatch, plus where every rank's tokens sit in the whole micro-batch (`positions`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from genlip_megatron.config.validate import context_split_problem
from genlip_megatron.data.packed_batch import PackedBatch


def query_work(spans: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """int64 [num_tokens]: keys each flattened position attends to under the prefix-LM mask
    (image patch: its sample's image tokens; i-th text token: image tokens + i + 1; padding: 0).

    spans: int64 [K, 3] = (start, text start, end) per sample (PackedBatch.spans)."""
    work = torch.zeros(num_tokens, dtype=torch.long)
    start, text_start, end = spans.long().cpu().unbind(1)
    lengths = end - start
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    n_img = torch.repeat_interleave(text_start - start, lengths)
    work[within + torch.repeat_interleave(start, lengths)] = torch.where(within < n_img, n_img, within + 1)
    return work


def _assign_row(work: list[int], cp: int, chunks: int, load: list[int]) -> list[list[int]]:
    """Chunks of one sequence per rank (exactly `chunks` each), balancing the running `load`."""
    owned: list[list[int]] = [[] for _ in range(cp)]
    for index in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        rank = min((r for r in range(cp) if len(owned[r]) < chunks), key=lambda r: (load[r], r))
        owned[rank].append(index)
        load[rank] += work[index]
    for _ in range(4 * cp * chunks):  # swaps between the extremes while they narrow the spread
        hi = max(range(cp), key=lambda r: (load[r], -r))
        lo = min(range(cp), key=lambda r: (load[r], r))
        gap = load[hi] - load[lo]
        best = None
        for i in owned[hi]:
            for j in owned[lo]:
                moved = work[i] - work[j]
                if 0 < moved < gap and (best is None or abs(gap - 2 * moved) < best[0]):
                    best = (abs(gap - 2 * moved), i, j, moved)
        if best is None or best[0] >= gap:
            break
        _, i, j, moved = best
        owned[hi][owned[hi].index(i)], owned[lo][owned[lo].index(j)] = j, i
        load[hi] -= moved
        load[lo] += moved
    return [sorted(c) for c in owned]


def context_positions(spans: torch.Tensor, batch_size: int, seq_length: int, cp: int,
                      chunks: int) -> torch.Tensor:
    """int64 [cp, B * S/cp]: the flattened [B * S] positions each rank holds, in its local order
    (sequence b's positions before sequence b+1's, ascending within)."""
    problem = context_split_problem(seq_length, cp, chunks)
    if problem:
        raise ValueError(problem)
    size = seq_length // (cp * chunks)
    chunk_work = query_work(spans, batch_size * seq_length).view(batch_size, cp * chunks, size).sum(2)
    load = [0] * cp
    owned = [_assign_row(row, cp, chunks, load) for row in chunk_work.tolist()]
    step = torch.arange(size)
    return torch.stack([
        torch.cat([row * seq_length + index * size + step for row in range(batch_size)
                   for index in owned[row][rank]])
        for rank in range(cp)])


@dataclass(frozen=True)
class ContextShard:
    """One CP rank's share of a PackedBatch: B sequences of S' = S/cp tokens each.

    Attributes:
        tokens, is_image, segment_ids, labels, loss_mask: [B, S'] (as in PackedBatch, this rank's
            positions in local order); position_ids: int64 [3, B, S'];
        image_patches: [N', C*P*P] the patches of this rank's image positions, in local order;
        spans: int64 [K, 3] the WHOLE micro-batch's samples, offsets into its flattened [B * S]
            stream (attention needs every sample's extent: a query sees its sample's keys on any rank);
        positions: int64 [cp, B * S'] where every rank's tokens sit in that stream (row `rank` is
            this rank's; the rows together are a permutation of [0, B * S)).
        rank: this rank's index in the CP group.
    """

    tokens: torch.Tensor
    image_patches: torch.Tensor
    is_image: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    spans: torch.Tensor
    positions: torch.Tensor
    rank: int

    @property
    def micro_batch_size(self) -> int:
        return self.tokens.shape[0]

    def to(self, device, non_blocking: bool = True) -> ContextShard:
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self) if f.name != "rank"})


def shard_batch(batch: PackedBatch, positions: torch.Tensor, rank: int) -> ContextShard:
    """The share of `batch` that CP rank `rank` holds under `positions` (from context_positions)."""
    b, s = batch.tokens.shape
    local = positions[rank]
    width = local.numel() // b

    def take(x: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B, S']
        return x.reshape(-1)[local].view(b, width)

    is_image = batch.is_image.reshape(-1)
    patch_of = is_image.long().cumsum(0) - 1  # position -> row of image_patches
    local_images = local[is_image[local]]
    return ContextShard(
        tokens=take(batch.tokens), image_patches=batch.image_patches[patch_of[local_images]],
        is_image=take(batch.is_image), position_ids=batch.position_ids.reshape(3, -1)[:, local].view(3, b, width),
        segment_ids=take(batch.segment_ids), labels=take(batch.labels), loss_mask=take(batch.loss_mask),
        spans=batch.spans, positions=positions, rank=rank)


def split_batch(batch: PackedBatch, cp: int, chunks: int, rank: int) -> ContextShard:
    """This CP rank's share of a packed micro-batch (every rank of the group calls it alike)."""
    positions = context_positions(batch.spans, batch.micro_batch_size, batch.seq_length, cp, chunks)
    return shard_batch(batch, positions, rank)
