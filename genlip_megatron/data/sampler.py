"""The global sample order: a seeded bijection over all samples of all shards, epoch after epoch.

Global position `p` (0, 1, 2, ... over the whole run) lives in epoch `p // N` and maps to dataset index
`permute(p % N)` with a permutation keyed by (seed, epoch). Nothing per sample is stored: the
permutation is a Feistel network over the next power of four >= N with cycle-walking, so memory is
O(number of shards) (the cumulative shard offsets used by `locate`) and start-up is instant even for
a billion samples.

NOTE: we shuffle globally (every sample can land next to any other), not "shuffled shard order, then
samples within a shard": a global bijection mixes strictly better and costs the same. Reads are then
random across shards, which the memory-mapped shard format serves at tens of thousands per second.

The run's only data state is `consumed_samples` in this GLOBAL order (epoch = consumed // N). Whatever
splits a global batch across data-parallel ranks (see `rank_positions` and the packer) must be a pure
function of the global order, so a resume with another DP size continues with the exact next sample.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["FeistelPermutation", "GlobalOrder", "rank_positions", "mix64"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays: a cheap, well-mixing bijection of 64-bit words."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def derive_key(*parts: int) -> int:
    """One 64-bit key from a tuple of ints (seed, epoch, purpose, ...), stable across processes."""
    state = 0
    for part in parts:
        state = int(mix64(np.array([(state + _GOLDEN + (int(part) & _U64)) & _U64], dtype=np.uint64))[0])
    return state


class FeistelPermutation:
    """A seeded bijection of [0, n), evaluated on arrays without materialising it.

    A balanced Feistel network on 2*h bits (4**h >= n) is a bijection of [0, 4**h); cycle-walking
    (re-apply until the value falls below n) restricts it to a bijection of [0, n). Since 4**h < 4n,
    a value needs fewer than four applications on average.
    """

    ROUNDS = 6  # 4 suffice for pseudo-randomness in theory; 6 leaves margin for a cheap round function

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"permutation domain must be non-empty, got n={n}")
        self.n = int(n)
        self.half_bits = max(1, ((self.n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half_bits) - 1)
        self.round_keys = [np.uint64(derive_key(key, r)) for r in range(self.ROUNDS)]

    def _network(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self.mask
        for k in self.round_keys:
            left, right = right, left ^ (mix64(right ^ k) & self.mask)
        return (left << shift) | right

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """int64 [K] in [0, n) -> int64 [K] in [0, n), a bijection."""
        y = self._network(np.asarray(x, dtype=np.uint64))
        out_of_range = y >= np.uint64(self.n)
        while out_of_range.any():
            y[out_of_range] = self._network(y[out_of_range])
            out_of_range = y >= np.uint64(self.n)
        return y.astype(np.int64)


class GlobalOrder:
    """Global position -> dataset index, for every epoch, deterministic from (seed, epoch).

    Args:
        shard_sizes: samples per shard, in dataset order (dataset index = shard offset + local index).
        seed: run seed; epoch e uses the permutation keyed by (seed, e).
    """

    def __init__(self, shard_sizes: Sequence[int], seed: int):
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        if sizes.ndim != 1 or len(sizes) == 0 or (sizes < 0).any() or sizes.sum() == 0:
            raise ValueError("shard_sizes must be a non-empty list of non-negative counts with a positive sum")
        self.shard_offsets = np.concatenate([[0], np.cumsum(sizes)])  # int64 [num_shards + 1]
        self.num_samples = int(self.shard_offsets[-1])
        self.seed = int(seed)
        self._perms: dict[int, FeistelPermutation] = {}

    def permutation(self, epoch: int) -> FeistelPermutation:
        if epoch not in self._perms:
            if len(self._perms) > 4:  # only the current and neighbouring epochs are ever asked for
                self._perms.clear()
            self._perms[epoch] = FeistelPermutation(self.num_samples, derive_key(self.seed, epoch, 0x5A))
        return self._perms[epoch]

    def epoch_of(self, position: int) -> int:
        return int(position) // self.num_samples

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """int64 [K] global positions (any epochs) -> int64 [K] dataset indices."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, local = np.divmod(positions, self.num_samples)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.permutation(int(epoch))(local[sel])
        return out

    def span(self, start: int, stop: int) -> np.ndarray:
        """Dataset indices of global positions [start, stop): int64 [stop - start]."""
        return self.indices(np.arange(start, stop, dtype=np.int64))

    def locate(self, index: int) -> tuple[int, int]:
        """Dataset index -> (shard, index inside the shard), for logs."""
        shard = int(np.searchsorted(self.shard_offsets, index, side="right")) - 1
        return shard, int(index - self.shard_offsets[shard])


def rank_positions(consumed: int, global_batch: int, dp_rank: int, dp_size: int) -> np.ndarray:
    """Global positions of one data-parallel rank's share of the global batch starting at `consumed`.

    Rank r takes positions consumed + r, consumed + r + D, ... (strided): the shares are disjoint,
    cover the batch exactly, and depend only on the global order, so a resume at a global-batch
    boundary with another D continues the same stream. Returns int64 [global_batch // D].
    """
    if global_batch % dp_size:
        raise ValueError(f"global batch {global_batch} is not divisible by the data-parallel size {dp_size}")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
    return np.arange(consumed + dp_rank, consumed + global_batch, dp_size, dtype=np.int64)
