"""SyntheticBatches: the packed-batch contract, the same global batch under any DP size, exact resume."""

import torch
from tiny_runs import tiny_config

from genlip_megatron.training.batches import SyntheticBatches

CFG = tiny_config(["train.global_batch_size=4", "train.micro_batch_size=1"])


def _step(source):
    return [source.next() for _ in range(source.micro_batches_per_step)]


def _rows(micro_batches, key):
    return torch.cat([getattr(mb, key) for mb in micro_batches])


def test_batches_follow_the_packed_batch_contract():
    batch = SyntheticBatches(CFG, 0, 1).next()
    s, b = CFG.data.seq_length, CFG.train.micro_batch_size
    assert batch.tokens.shape == (b, s) and batch.position_ids.shape == (3, b, s)
    assert batch.image_patches.shape == (int(batch.is_image.sum()), 3 * CFG.model.patch_size ** 2)
    assert ((batch.loss_mask == 1) <= (batch.labels >= 0)).all()
    assert int(batch.tokens.max()) < CFG.model.vocab_size


def test_the_global_batch_is_the_same_under_dp1_and_dp2():
    single = _step(SyntheticBatches(CFG, 0, 1))
    # global sequence j lives on rank j % 2 (config/step_split.py): interleave the ranks' micro-batches
    halves = [mb for pair in zip(_step(SyntheticBatches(CFG, 0, 2)), _step(SyntheticBatches(CFG, 1, 2)))
              for mb in pair]
    for key in ("tokens", "labels", "segment_ids"):
        assert torch.equal(_rows(single, key), _rows(halves, key))


def test_restoring_the_state_continues_the_exact_stream():
    first = SyntheticBatches(CFG, 1, 2)
    _step(first)
    state = first.state_dict()
    expected = _step(first)
    resumed = SyntheticBatches(CFG, 1, 2)
    resumed.load_state_dict(state)
    got = _step(resumed)
    assert all(torch.equal(a.tokens, b.tokens) and torch.equal(a.image_patches, b.image_patches)
               for a, b in zip(expected, got))
