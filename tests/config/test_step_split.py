"""The step boundary: G sequences per step split into whole micro-batches on every data-parallel rank,
every sequence of the step on exactly one rank and micro-batch, the strided rule the loader uses."""

import pytest

from genlip_megatron.config.step_split import StepSplit


@pytest.mark.parametrize("g, b, d", [(12, 2, 3), (8, 1, 8), (16, 4, 2), (6, 6, 1)])
def test_every_sequence_of_the_step_lands_once(g, b, d):
    split = StepSplit(g, b, d)
    assert split.micro_batches == g // (b * d) and split.sequences_per_rank == g // d
    placed = [j for r in range(d) for m in range(split.micro_batches) for j in split.rows(r, m)]
    assert sorted(placed) == list(range(g))
    for r in range(d):  # rank r holds exactly the sequences j with j % d == r, in order
        mine = [j for m in range(split.micro_batches) for j in split.rows(r, m)]
        assert mine == list(range(r, g, d))


def test_an_uneven_split_is_refused_with_the_keys_to_change():
    with pytest.raises(ValueError, match=r"train.global_batch_size=10 is not divisible by "
                                         r"train.micro_batch_size x data-parallel size = 2 x 3"):
        StepSplit(10, 2, 3)
    assert StepSplit.problem(7, 2, None) == "train.global_batch_size=7 is not divisible by train.micro_batch_size=2"
    assert StepSplit.problem(8, 2, None) is None


def test_one_micro_batch_per_rank_takes_the_ranks_share_at_once():
    from types import SimpleNamespace

    cfg = SimpleNamespace(train=SimpleNamespace(global_batch_size=8, micro_batch_size=8))
    split = StepSplit.one_micro_batch_per_rank(cfg, 2)
    assert (split.micro_batch_size, split.micro_batches, split.rows(1, 0)) == (4, 1, [1, 3, 5, 7])
    with pytest.raises(ValueError, match=r"3 data-parallel ranks do not divide train.global_batch_size=8"):
        StepSplit.one_micro_batch_per_rank(cfg, 3)
