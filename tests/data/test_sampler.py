"""The global sample order (genlip_megatron/data/sampler.py): bijective, deterministic, resumable, O(shards)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from genlip_megatron.data.sampler import FeistelPermutation, GlobalOrder, rank_positions


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_feistel_is_a_bijection_of_small_domains(n):
    perm = FeistelPermutation(n, key=12345)
    assert sorted(perm(np.arange(n)).tolist()) == list(range(n))


def test_feistel_is_a_bijection_on_a_million_samples_and_not_the_identity():
    n = 10**6
    out = FeistelPermutation(n, key=7)(np.arange(n))
    assert out.min() == 0 and out.max() == n - 1 and len(np.unique(out)) == n
    assert (out == np.arange(n)).mean() < 1e-3  # shuffled, not (near) identity
    # neighbours in the order land far apart: no shard-sized runs of consecutive samples
    assert np.median(np.abs(np.diff(out))) > n / 10


def test_order_is_deterministic_from_seed_and_epoch():
    a, b, c = GlobalOrder([50, 30, 20], seed=1), GlobalOrder([50, 30, 20], seed=1), GlobalOrder([50, 30, 20], seed=2)
    assert np.array_equal(a.span(0, 300), b.span(0, 300))
    assert not np.array_equal(a.span(0, 100), c.span(0, 100))
    assert not np.array_equal(a.span(0, 100), a.span(100, 200))  # each epoch its own permutation
    for epoch in range(3):  # every epoch visits every sample exactly once
        assert sorted(a.span(100 * epoch, 100 * (epoch + 1)).tolist()) == list(range(100))


def test_locate_maps_dataset_index_to_shard_and_offset():
    order = GlobalOrder([5, 0, 3], seed=0)
    assert [order.locate(i) for i in (0, 4, 5, 7)] == [(0, 0), (0, 4), (2, 0), (2, 2)]


@pytest.mark.parametrize("dp_size", [1, 2, 3, 8])
def test_dp_ranks_are_disjoint_and_cover_each_global_batch(dp_size):
    global_batch = 24
    for consumed in (0, 24, 48):
        shares = [rank_positions(consumed, global_batch, r, dp_size) for r in range(dp_size)]
        flat = np.concatenate(shares)
        assert sorted(flat.tolist()) == list(range(consumed, consumed + global_batch))


def test_resume_with_another_dp_size_continues_the_global_stream():
    order, global_batch = GlobalOrder([40, 60], seed=3), 24

    def stream(dp_size, first_batch, num_batches):
        out = []
        for b in range(first_batch, first_batch + num_batches):
            shares = [order.indices(rank_positions(b * global_batch, global_batch, r, dp_size)) for r in range(dp_size)]
            batch = np.empty(global_batch, dtype=np.int64)
            for r, share in enumerate(shares):
                batch[r::dp_size] = share  # rank r holds positions r, r + D, ...
            out.append(batch)
        return np.concatenate(out)

    uninterrupted = stream(2, 0, 10)
    resumed = np.concatenate([stream(2, 0, 4), stream(3, 4, 3), stream(8, 7, 3)])
    assert np.array_equal(uninterrupted, resumed)


def test_billion_sample_order_starts_fast_in_little_memory():
    # A fresh interpreter so the measured RSS is the sampler's, not the test session's.
    code = textwrap.dedent("""
        import time
        t0 = time.perf_counter()
        import numpy as np
        from genlip_megatron.data.sampler import GlobalOrder
        order = GlobalOrder([10_000] * 100_000, seed=1234)
        first = order.span(0, 100_000)                      # a large first global batch
        late = order.span(5 * 10**9 - 1000, 5 * 10**9 + 1000)  # crossing into the sixth epoch
        start = time.perf_counter() - t0
        assert order.num_samples == 10**9 and first.max() < 10**9 and late.max() < 10**9
        # VmHWM, not ru_maxrss: after fork + exec the latter can report the (large) parent's peak
        hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
        print(start, hwm_kb / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    start_s, rss_mb = map(float, out.stdout.split())
    assert start_s < 1.0, f"start-up took {start_s:.2f} s"
    assert rss_mb < 200, f"peak RSS {rss_mb:.0f} MB"
