"""The packed loader end to end: determinism, DP coverage, exact resume (any DP size), bad samples."""

import logging

import numpy as np
import pytest
import torch
from toy_dataset import ListDataset, ToySample, fashion_samples, sample_ids

from genlip_megatron.data.image_geometry import ImageGeometry
from genlip_megatron.data.loader import BadDataError, PackedLoader
from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.data.sampler import GlobalOrder

GEOMETRY = ImageGeometry(patch_size=4, image_size=28)  # Fashion-MNIST: 49 patches per image
TEXT = TextLayout(prompt_ids=(7, 8), end_ids=(9,), max_caption_tokens=16)
SEQ, GLOBAL_BATCH = 128, 24  # ~2 samples per sequence, ~48 samples per step
SAMPLES = fashion_samples(150, caption_words=6)
KEYS = ("tokens", "image_patches", "is_image", "position_ids", "segment_ids", "labels", "loss_mask", "spans")


def _dataset(samples=SAMPLES, broken=()):
    return ListDataset(samples, [60, 40, 50], broken=set(broken))


def _loader(dp_rank=0, dp_size=1, consumed=0, decoder="reference", dataset=None, **kw):
    return PackedLoader(dataset or _dataset(), GEOMETRY, TEXT, SEQ, GLOBAL_BATCH, micro_batch_size=1,
                        dp_rank=dp_rank, dp_size=dp_size, seed=11, consumed_samples=consumed, decoder=decoder,
                        num_workers=1, **kw)


def _global_steps(dp_size, num_steps, consumed=0, decoder="reference"):
    """Rows of each global step, reassembled from all ranks (global row j lives on rank j % D)."""
    per_rank = GLOBAL_BATCH // dp_size
    loaders = [_loader(r, dp_size, consumed, decoder) for r in range(dp_size)]
    iters = [iter(loader) for loader in loaders]
    steps = []
    for _ in range(num_steps):
        micro = [[next(it) for _ in range(per_rank)] for it in iters]
        steps.append([micro[j % dp_size][j // dp_size] for j in range(GLOBAL_BATCH)])
    return steps, loaders[0].state_dict()


def _assert_same_rows(a, b):
    for row_a, row_b in zip(a, b):
        for key in KEYS:
            assert torch.equal(getattr(row_a, key), getattr(row_b, key)), key


def test_same_seed_gives_identical_batches():
    a, b = iter(_loader()), iter(_loader())
    for _ in range(2 * GLOBAL_BATCH):
        _assert_same_rows([next(a)], [next(b)])
    other = next(iter(PackedLoader(_dataset(), GEOMETRY, TEXT, SEQ, GLOBAL_BATCH, 1, 0, 1, seed=12)))
    assert not torch.equal(other.tokens, next(iter(_loader())).tokens)


@pytest.mark.parametrize("dp_size", [1, 2, 3, 8])
def test_dp_ranks_see_disjoint_samples_covering_the_epoch_once(dp_size):
    steps, state = [], None
    while state is None or state["consumed_samples"] < len(SAMPLES):
        more, state = _global_steps(dp_size, len(steps) + 1)
        steps = more
    per_rank = [[i for j, row in enumerate(step) if j % dp_size == r for i in sample_ids(row.tokens)]
                for step in steps for r in range(dp_size)]
    flat = [i for ids in per_rank for i in ids]
    order = GlobalOrder(_dataset().shard_sizes, seed=11)
    assert sorted(flat) == sorted(order.span(0, state["consumed_samples"]).tolist())  # exactly the stream
    assert sorted(order.span(0, len(SAMPLES)).tolist()) == list(range(len(SAMPLES)))  # = the epoch, once
    for step in range(len(steps) - 1):  # within a step (inside epoch 0) ranks never share a sample
        shares = [set(per_rank[step * dp_size + r]) for r in range(dp_size)]
        assert sum(map(len, shares)) == len(set().union(*shares))


def test_global_stream_is_the_same_for_every_dp_size():
    one, _ = _global_steps(1, 2)
    three, _ = _global_steps(3, 2)
    for a, b in zip(one, three):
        _assert_same_rows(a, b)


def test_resume_with_another_dp_size_continues_the_exact_stream():
    uninterrupted, _ = _global_steps(2, 5)
    first, state = _global_steps(2, 2)
    assert state["consumed_samples"] > 0
    resumed = _loader(0, 3)
    resumed.load_state_dict(state)
    rest, _ = _global_steps(3, 3, consumed=resumed.consumed_samples)
    for a, b in zip(uninterrupted, first + rest):
        _assert_same_rows(a, b)


def test_dali_loader_equals_reference_loader():
    dali, _ = _global_steps(2, 2, decoder="dali")
    ref, _ = _global_steps(2, 2, decoder="reference")
    for step_a, step_b in zip(dali, ref):
        for a, b in zip(step_a, step_b):
            for key in KEYS[2:] + ("tokens",):
                assert torch.equal(getattr(a, key), getattr(b, key)), key
            assert torch.allclose(a.image_patches, b.image_patches, atol=1e-5)  # 28 px: no resize


def _corrupted(index_bad_header, index_bad_body):
    samples = list(SAMPLES)
    s = samples[index_bad_header]
    samples[index_bad_header] = s._replace(image=np.frombuffer(b"not a jpeg at all" * 10, np.uint8))
    s = samples[index_bad_body]
    body = s.image.copy()
    body[-len(body) // 5 : -2] = 0  # header intact, end of the entropy-coded data destroyed
    samples[index_bad_body] = ToySample(body, s.tokens, s.height, s.width, s.key)
    return samples


@pytest.mark.parametrize("decoder", ["reference", "dali", "dali-without-header-check"])
def test_bad_samples_are_replaced_deterministically_counted_and_logged(decoder, caplog, monkeypatch):
    if decoder == "dali-without-header-check":  # garbage reaches DALI: exercises the fallback decode
        monkeypatch.setattr("genlip_megatron.data.rank_schedule.check_header", lambda encoded: None)
    bad_read, bad_header, bad_body = {3, 17, 40}, 5, 8
    dataset = _dataset(_corrupted(bad_header, bad_body), broken=bad_read)
    runs = []
    for _ in range(2):
        loader = _loader(decoder=decoder.split("-")[0], dataset=dataset, max_bad_fraction=0.1)
        it = iter(loader)
        with caplog.at_level(logging.WARNING, logger="genlip_megatron.data.loader"):
            batches = [next(it) for _ in range(7 * GLOBAL_BATCH)]  # > 2 epochs: every bad sample is met
        runs.append((batches, loader.bad_samples))
    _assert_same_rows(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] >= 4
    seen = {i for b in runs[0][0] for i in sample_ids(b.tokens)}
    assert seen.isdisjoint(bad_read | {bad_header}) and len(seen) >= len(SAMPLES) - 5
    # a damaged body with an intact header decodes leniently (grey fill) in DALI and in Pillow alike:
    # kept, the same way on every run (catching it would take a second full decode)
    assert bad_body in seen
    assert "shard 0 index 3 (dataset index 3)" in caplog.text and "shard 0 index 5" in caplog.text


def test_too_many_bad_samples_stop_the_run_with_a_clear_message():
    loader = _loader(dataset=_dataset(broken=set(range(0, 150, 3))), max_bad_fraction=0.01)
    with pytest.raises(BadDataError, match="max_bad_fraction=0.01"):
        for _ in zip(range(100 * GLOBAL_BATCH), loader):
            pass
