"""What each data-parallel rank processes at every DALI iteration: a pure function of the data.

    global step n: plan_step(consumed_n)                  same on every rank, metadata only
    micro-batch m of this rank: plan.bins[j] for j in StepSplit.rows(dp_rank, m)
                                                          (config/step_split.py: strided over ranks)
    each slot resolved: read the sample, check its JPEG header; a bad one is replaced (below)

It runs in the main process (tokens, assembly) AND in every DALI worker process (image bytes), which
agree because nothing here depends on state other than the arguments.

Bad samples. Unreadable metadata while planning: skipped (every rank sees the same), at most
`max_unreadable` per step (packing.plan_step). Unreadable bytes, a bad JPEG header or a token id
outside the tokenizer's vocabulary in a slot: replaced by the first of up to 64 candidates, drawn by hashing (seed,
position, attempt), that reads, has a valid header and fits the slot's token count (the row then ends
with a little more padding); no candidate -> the slot stays empty. `exclude` lets the loader reject
images whose body fails a full decode, with the same replacement rule.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.data.dali_pipeline import ImageItem
from genlip_megatron.data.image_geometry import ImageGeometry
from genlip_megatron.data.packing import Slot, StepPlan, plan_step
from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.data.sampler import GlobalOrder, derive_key

try:
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

__all__ = ["RankSchedule", "ResolvedSample", "ImageItemsAt", "check_header", "check_token_ids"]

MAX_REPLACEMENT_TRIES = 64


class ResolvedSample(NamedTuple):
    slot: Slot  # the planned slot
    index: int  # dataset index actually used (differs from slot.index after a replacement)
    sample: object  # Sample(image, tokens, height, width, key)
    window: tuple[float, float, float, float]
    size: tuple[int, int]
    bad: tuple[tuple[int, str], ...]  # (dataset index, reason) of each rejected sample


def check_header(encoded: np.ndarray) -> None:
    """Cheap validity check before an image reaches DALI (a failing image fails its whole batch)."""
    data = memoryview(np.ascontiguousarray(encoded, dtype=np.uint8))
    if simplejpeg is None or not simplejpeg.is_jpeg(data):
        raise ValueError("not a JPEG")
    simplejpeg.decode_jpeg_header(data)


def check_token_ids(tokens: np.ndarray, vocab_size: int) -> None:
    """Ids outside [0, vocab_size) would index past the embedding (a crash mid-run) or, inside a
    padded vocabulary, train on rows no tokenizer emits: such a sample is bad (~1.6 us per sample)."""
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token id {int(tokens.max() if tokens.max() >= vocab_size else tokens.min())} is "
                         f"outside the tokenizer's vocabulary of {vocab_size}")


class RankSchedule:
    """What this rank processes at every DALI iteration, computed identically in every process.

    Args:
        dataset: len(), [i] -> Sample; shard_sizes (list[int]); optional locate(i) -> (shard, local).
        global_batch_size: packed sequences per global step (G), divisible by dp_size * micro_batch_size.
        start_consumed: global position where iteration 0's step starts (a step boundary).
    """

    def __init__(self, dataset, geometry: ImageGeometry, text: TextLayout, seq_length: int,
                 global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 seed: int, start_consumed: int = 0, max_unreadable: Optional[int] = None,
                 vocab_size: Optional[int] = None):
        self.split = StepSplit(global_batch_size, micro_batch_size, dp_size)
        # A sample longer than seq_length is cut to it (end text first), as the official code cuts
        # at its max length; the largest image with the prompt must still leave a caption token.
        text = text.capped(seq_length)
        text.sample_length(geometry.max_image_tokens(), 1)  # raises when even that does not fit
        self.dataset, self.geometry, self.text, self.seq_length = dataset, geometry, text, seq_length
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.max_unreadable, self.vocab_size = max_unreadable, vocab_size
        self.order = GlobalOrder(dataset.shard_sizes, seed)
        self.micro_batches_per_step = self.split.micro_batches
        self._step_starts = [int(start_consumed)]  # consumed samples before step n (relative to start)
        self._plans: dict[int, StepPlan] = {}

    def sample_length(self, position: int, index: int, sample=None) -> int:
        sample = self.dataset[index] if sample is None else sample
        gh, gw = self.geometry.grid(sample.height, sample.width, position, index)
        return self.text.sample_length(gh * gw, len(sample.tokens))

    def step_plan(self, step: int) -> StepPlan:
        while len(self._step_starts) <= step:  # plans chain: step n starts where step n - 1 ended
            self._step_starts.append(self.step_plan(len(self._step_starts) - 1).end)
        if step not in self._plans:
            if len(self._plans) > 8:
                self._plans.pop(min(self._plans))
            self._plans[step] = plan_step(self.order, self._step_starts[step], self.global_batch_size,
                                          self.seq_length, self.sample_length,
                                          max_unreadable=self.max_unreadable)
        return self._plans[step]

    def rows(self, iteration: int) -> list[list[Slot]]:
        """The micro-batch_size packed sequences (lists of slots) of DALI iteration k on this rank."""
        step, micro = divmod(iteration, self.micro_batches_per_step)
        bins = self.step_plan(step).bins
        return [bins[j] for j in self.split.rows(self.dp_rank, micro)]

    def _usable(self, slot: Slot, index: int, room: int, bad: list) -> Optional[ResolvedSample]:
        try:
            sample = self.dataset[index]
            check_header(sample.image)
            if self.vocab_size is not None:
                check_token_ids(sample.tokens, self.vocab_size)
        except Exception as err:  # noqa: BLE001 - unreadable region, truncated file, not a JPEG, ...
            bad.append((index, repr(err)))
            return None
        if self.sample_length(slot.position, index, sample) > room:
            return None  # a fine sample, just too long for this slot: not counted as bad
        window = self.geometry.crop_window(sample.height, sample.width, slot.position, index)
        size = self.geometry.output_size(sample.height, sample.width, window)
        return ResolvedSample(slot, index, sample, window, size, tuple(bad))

    def resolve(self, slot: Slot, exclude: tuple[int, ...] = ()) -> Optional[ResolvedSample]:
        """The sample that fills `slot`: its own, or a deterministic replacement (None: none found).
        `exclude` lists indices known bad from a full decode (the DALI fallback)."""
        bad: list[tuple[int, str]] = [(i, "failed to decode") for i in exclude]
        if slot.index not in exclude:
            found = self._usable(slot, slot.index, slot.length, bad)
            if found is not None:
                return found
        for attempt in range(1, MAX_REPLACEMENT_TRIES + 1):
            candidate = derive_key(self.seed, slot.position, attempt, 0xBAD) % self.order.num_samples
            if candidate in exclude:
                continue
            found = self._usable(slot, candidate, slot.length, bad)
            if found is not None:
                return found._replace(bad=tuple(bad))
        return ResolvedSample(slot, -1, None, (0.0, 0.0, 1.0, 1.0), (0, 0), tuple(bad))

    def resolved_rows(self, iteration: int) -> list[list[ResolvedSample]]:
        """Resolved slots per row; an unfillable slot stays in the list with sample None (for counting)."""
        return [[self.resolve(slot) for slot in row] for row in self.rows(iteration)]

    def image_items(self, iteration: int) -> list[ImageItem]:
        """The DALI worker's view: this micro-batch's images in sequence order."""
        return [ImageItem(r.sample.image, r.window, r.size)
                for row in self.resolved_rows(iteration) for r in row if r.sample is not None]


class ImageItemsAt:
    """DALI iteration i of a (re)built pipeline = schedule iteration base + i (picklable)."""

    def __init__(self, schedule: RankSchedule, base: int):
        self.schedule, self.base = schedule, base

    def __call__(self, iteration: int) -> list[ImageItem]:
        return self.schedule.image_items(self.base + iteration)
