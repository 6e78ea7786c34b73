"""How a packed micro-batch is split over context-parallel ranks (data/context_split.py): the work
count against the real prefix-LM mask, the shape of the split, the per-rank attention work on stage-2
packs, and a rank's share of every batch field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genlip_megatron.config.load import load_config
from genlip_megatron.config.validate import context_split_problem as split_problem
from genlip_megatron.data.context_split import (
    context_positions,
    query_work,
    shard_batch,
    split_batch,
)
from genlip_megatron.data.image_geometry import smart_resize
from genlip_megatron.data.packing import pack_sequences
from genlip_megatron.data.sample_sequence import TextLayout, build_sample_sequence
from genlip_megatron.hf.masks import prefix_lm_mask

TEXT = TextLayout(prompt_ids=(1, 2), end_ids=(3,), max_caption_tokens=64)


def _pack(rows: list[list[tuple[int, int, int]]], seq_length: int, seed: int = 0):
    """PackedBatch of rows of samples (grid_h, grid_w, caption tokens), random pixels and ids."""
    rng = np.random.default_rng(seed)
    packed = []
    for row in rows:
        samples = []
        for gh, gw, n in row:
            seq = build_sample_sequence(gh, gw, rng.integers(4, 100, size=n), TEXT)
            samples.append((seq, rng.uniform(-1, 1, size=(gh * gw, 12)).astype(np.float32)))
        packed.append(samples)
    return pack_sequences(packed, seq_length)


def test_work_of_each_position_is_the_key_count_of_its_prefix_lm_mask_row():
    batch = _pack([[(2, 3, 5), (1, 2, 9)], [(3, 3, 4)]], seq_length=32)
    allowed = ~prefix_lm_mask(batch.segment_ids, batch.is_image)[:, 0]  # [B, S, S], True = may see
    keys = allowed.sum(-1).where(batch.segment_ids >= 0, 0)  # padding sees itself only: no work
    assert torch.equal(query_work(batch.spans, batch.tokens.numel()), keys.reshape(-1))


@pytest.mark.parametrize("cp,chunks,batch_size", [(2, 3, 2), (4, 2, 1), (3, 4, 2)])
def test_every_rank_gets_chunks_per_rank_equal_chunks_of_every_sequence(cp, chunks, batch_size):
    seq = 48
    rows = [[(3, 4, 5), (4, 4, 9)], [(2, 5, 14), (1, 3, 4), (2, 2, 3)]][:batch_size]
    batch = _pack(rows, seq_length=seq)
    positions = context_positions(batch.spans, batch_size, seq, cp, chunks)
    assert positions.shape == (cp, batch_size * seq // cp)
    assert torch.equal(positions.reshape(-1).sort().values, torch.arange(batch_size * seq))  # a permutation
    size = seq // (cp * chunks)
    for rank_positions in positions:
        per_row = rank_positions.view(batch_size, seq // cp)
        for b, row in enumerate(per_row):
            assert ((row // seq) == b).all()  # row b of the shard comes from sequence b
            assert (row.diff() > 0).all()  # ascending: local order is sequence order
            starts = row.view(chunks, size)[:, 0] % seq
            assert (starts % size == 0).all() and torch.equal(row.view(chunks, size) % seq,
                                                              starts[:, None] + torch.arange(size))
    again = context_positions(batch.spans, batch_size, seq, cp, chunks)
    assert torch.equal(positions, again)  # every rank of the group computes the same split


def _stage2_spans(seq_length: int, rng: np.random.Generator) -> torch.Tensor:
    """Spans of one stage-2 pack: web-photo sizes through the stage-2 geometry (native aspect
    ratio, 64^2..512^2 pixels, patch 16), captions of 10..250 tokens, first-fit into seq_length."""
    cfg = load_config("genlip_g16_stage2")
    d, patch = cfg.data, cfg.model.patch_size
    spans, start = [], 0
    while True:
        height, width = (int(x) for x in rng.integers(120, 2400, size=2))
        h, w = smart_resize(height, width, patch, d.min_pixels, d.max_pixels)
        n_img, n_txt = (h // patch) * (w // patch), 2 + int(rng.integers(10, 250)) + 1
        if start + n_img + n_txt > seq_length:
            return torch.tensor(spans)
        spans.append((start, start + n_img, start + n_img + n_txt))
        start += n_img + n_txt


@pytest.mark.parametrize("seq_length,cp", [(16384, 2), (16384, 4), (16384, 8), (65536, 4), (65536, 8)])
def test_attention_work_per_rank_is_within_10_percent_of_the_mean_on_stage2_packs(seq_length, cp):
    rng = np.random.default_rng(seq_length + cp)
    chunks = load_config("genlip_g16_stage2").parallel.context_parallel_chunks
    for _ in range(4):
        spans = _stage2_spans(seq_length, rng)
        positions = context_positions(spans, 1, seq_length, cp, chunks)
        # Independent count: per position, the keys of its sample its mask row allows.
        segment = torch.full((seq_length,), -1)
        is_image = torch.zeros(seq_length, dtype=torch.bool)
        for k, (start, text_start, end) in enumerate(spans.tolist()):
            segment[start:end], is_image[start:text_start] = k, True
        images = torch.bincount(segment[is_image], minlength=len(spans))
        text_index = torch.zeros(seq_length, dtype=torch.long)
        for k, (_, text_start, end) in enumerate(spans.tolist()):
            text_index[text_start:end] = torch.arange(1, end - text_start + 1)
        keys = torch.where(segment >= 0, images[segment.clamp(min=0)] + text_index, 0)
        work = torch.stack([keys[p].sum() for p in positions]).double()
        assert (work / work.mean() - 1).abs().max() <= 0.10, work / work.mean()


def test_a_shard_holds_its_positions_of_every_field_and_its_image_patches_in_order():
    batch = _pack([[(3, 4, 5), (4, 4, 9)], [(2, 5, 14), (1, 3, 4)]], seq_length=48)
    shards = [split_batch(batch, 2, 3, rank) for rank in range(2)]
    patch_row = batch.is_image.reshape(-1).long().cumsum(0) - 1
    for rank, shard in enumerate(shards):
        local = shard.positions[rank]
        for name in ("tokens", "is_image", "segment_ids", "labels", "loss_mask"):
            assert torch.equal(getattr(shard, name).reshape(-1), getattr(batch, name).reshape(-1)[local])
        assert torch.equal(shard.position_ids.reshape(3, -1), batch.position_ids.reshape(3, -1)[:, local])
        image_positions = local[batch.is_image.reshape(-1)[local]]
        assert torch.equal(shard.image_patches, batch.image_patches[patch_row[image_positions]])
        assert torch.equal(shard.spans, batch.spans)
    # Together the shards hold every image patch and every loss position exactly once.
    assert sum(s.image_patches.shape[0] for s in shards) == batch.image_patches.shape[0]
    assert sum(float(s.loss_mask.sum()) for s in shards) == float(batch.loss_mask.sum())
    assert torch.equal(shard_batch(batch, shards[0].positions, 1).tokens, shards[1].tokens)


def test_sequence_lengths_that_do_not_split_are_refused_in_one_line():
    assert split_problem(48, 2, 3) is None and split_problem(48, 2, 3, tp_for_sp=2) is None
    assert "context_parallel_chunks" in split_problem(50, 2, 3)
    assert "sequence_parallel" in split_problem(60, 2, 2, tp_for_sp=4)
    with pytest.raises(ValueError, match="not divisible"):
        context_positions(torch.tensor([[0, 2, 5]]), 1, 50, 2, 3)
