"""The training data loader: this rank's packed micro-batches (docs/batch.md), forever, resumably.

    RankSchedule (global order -> packing plan -> this rank's rows, bad samples replaced)
      -> images: DALI (decoder_device "cpu" | "mixed") or the reference decoder
      -> per sample: token sequence + patches -> pack_sequences -> PackedBatch

DALI iteration k is micro-batch k % M of global step k // M (M = global_batch_size / (dp_size *
micro_batch_size)). Images whose body fails inside DALI fail the whole DALI batch; that micro-batch is
then decoded by the reference decoder, each failing image replaced by RankSchedule's rule, and the
pipeline is rebuilt from the next iteration - a pure function of the data, so reruns are identical.

Every bad sample is counted and logged with shard and index; when this rank's bad samples exceed
`max_bad_fraction` of the samples it handled (measured over at least 1,000 so one early failure does
not stop a run), `BadDataError` stops the run; planning applies the same bound to unreadable
metadata within one step, so a dataset whose every shard is refused fails at once.

State (`state_dict`): `consumed_samples` in the global order at the end of the last step whose
micro-batches have all been handed out. Restoring it - with any DP size - continues the exact stream.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from genlip_megatron.data.dali_pipeline import build_image_pipeline, run_image_pipeline
from genlip_megatron.data.image_geometry import ImageGeometry
from genlip_megatron.data.packing import BadDataError, pack_sequences
from genlip_megatron.data.rank_schedule import ImageItemsAt, RankSchedule, ResolvedSample
from genlip_megatron.data.reference_decode import reference_process
from genlip_megatron.data.sample_sequence import TextLayout, build_sample_sequence, patchify

__all__ = ["BadDataError", "PackedLoader"]

log = logging.getLogger(__name__)
MIN_SAMPLES_FOR_BAD_FRACTION = 1000


class PackedLoader:
    """Iterable of packed micro-batch dicts for one data-parallel rank (plain ints: no process groups).

    Args:
        dataset: len(), [i] -> Sample(image, tokens, height, width, key), shard_sizes; optional locate(i).
        geometry / text: image sizes and crops / prompt and end ids.
        global_batch_size, micro_batch_size: in packed sequences.
        decoder: "dali" or "reference" (the non-DALI path; tests and benchmarks).
        decoder_device: "cpu" or "mixed" (DALI GPU decode).
        vocab_size: the tokenizer's; a sample with a token id outside [0, vocab_size) is a bad sample.
    """

    def __init__(self, dataset, geometry: ImageGeometry, text: TextLayout, seq_length: int,
                 global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 consumed_samples: int = 0, decoder: str = "dali", decoder_device: str = "cpu",
                 num_workers: int = 2, num_threads: int = 2, max_bad_fraction: float = 0.001,
                 antialias: bool = True, vocab_size: int | None = None):
        if decoder not in ("dali", "reference"):
            raise ValueError(f"decoder must be 'dali' or 'reference', got {decoder!r}")
        # Planning stops at the same share of unreadable samples the run tolerates (below): a step
        # cannot scan on forever when every shard is refused.
        max_unreadable = math.floor(max_bad_fraction * MIN_SAMPLES_FOR_BAD_FRACTION + 1e-9)
        text = text.capped(seq_length)  # what RankSchedule plans with; samples are built alike
        self.schedule_args = dict(dataset=dataset, geometry=geometry, text=text, seq_length=seq_length,
                                  global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                                  dp_rank=dp_rank, dp_size=dp_size, seed=seed, max_unreadable=max_unreadable,
                                  vocab_size=vocab_size)
        RankSchedule(**self.schedule_args)  # validate the arguments now, not at the first batch
        self.dataset, self.geometry, self.text, self.seq_length = dataset, geometry, text, seq_length
        self.consumed_samples = int(consumed_samples)
        self.decoder, self.decoder_device = decoder, decoder_device
        self.num_workers, self.num_threads, self.antialias = num_workers, num_threads, antialias
        self.max_bad_fraction = max_bad_fraction
        self.bad_samples = 0
        self.handled_samples = 0

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        num = sum(self.dataset.shard_sizes)
        state = {"consumed_samples": self.consumed_samples, "epoch": self.consumed_samples // num,
                 "seed": self.schedule_args["seed"]}
        manifest = getattr(self.dataset, "manifest", None)  # shard datasets have one; test doubles do not
        if manifest is not None:
            state["dataset"] = manifest.content_id  # which data the position counts in (resume_policy.py)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.schedule_args["seed"]:
            raise ValueError(f"checkpoint data seed {state['seed']} != configured seed {self.schedule_args['seed']}")
        self.consumed_samples = int(state["consumed_samples"])

    # -- iteration ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        schedule = RankSchedule(**self.schedule_args, start_consumed=self.consumed_samples)
        per_step = schedule.micro_batches_per_step
        pipe = None
        iteration = 0
        while True:
            if iteration % per_step == 0:
                self._count_unreadable(schedule, iteration // per_step)
            rows = schedule.resolved_rows(iteration)
            if self.decoder == "reference":
                rows, images = self._reference_images(schedule, rows)
            else:
                if pipe is None:
                    pipe = self._build_pipeline(schedule, iteration)
                try:
                    images = run_image_pipeline(pipe)
                except RuntimeError as err:  # a JPEG body DALI cannot decode fails the whole batch
                    log.warning("DALI failed on micro-batch %d (%s); decoding it with the reference path",
                                iteration, str(err).splitlines()[0] if str(err) else type(err).__name__)
                    pipe = None  # rebuilt from the next iteration: its prefetched state is unusable
                    rows, images = self._reference_images(schedule, rows)
            batch = self._assemble(rows, images)
            self._count_bad(schedule, rows)
            iteration += 1
            if iteration % per_step == 0:  # the step's last micro-batch: what a checkpoint now records
                self.consumed_samples = schedule.step_plan(iteration // per_step - 1).end
            yield batch

    def _build_pipeline(self, schedule: RankSchedule, base: int):
        # most samples a row can hold: DALI sizes its per-sample buffers by max_batch_size
        longest_row = self.seq_length // self.text.sample_length(self.geometry.min_image_tokens(), 0)
        return build_image_pipeline(
            ImageItemsAt(schedule, base), max_batch_size=schedule.micro_batch_size * longest_row,
            decoder_device=self.decoder_device, pad_to_batch=self.geometry.native_resolution,
            num_workers=self.num_workers, num_threads=self.num_threads, antialias=self.antialias)

    def _reference_images(self, schedule: RankSchedule, rows):
        """Decode every image with the reference path; replace images whose full decode fails."""
        out_rows, images = [], []
        for row in rows:
            out_row = []
            for r in row:
                rejected: tuple[int, ...] = ()
                while r.sample is not None:
                    try:
                        images.append(reference_process(r.sample.image, r.window, r.size))
                        break
                    except Exception:  # noqa: BLE001 - corrupt body: same replacement rule as a bad header
                        rejected += (r.index,)
                        r = schedule.resolve(r.slot, exclude=rejected)
                out_row.append(r)
            out_rows.append(out_row)
        return out_rows, images

    def _assemble(self, rows: list[list[ResolvedSample]], images: list[np.ndarray]) -> dict:
        patch = self.geometry.patch_size
        it = iter(images)
        packed_rows = []
        for row in rows:
            packed = []
            for r in row:
                if r.sample is None:
                    continue
                image = next(it)
                seq = build_sample_sequence(r.size[0] // patch, r.size[1] // patch, r.sample.tokens, self.text)
                packed.append((seq, patchify(image, patch)))
            packed_rows.append(packed)
        return pack_sequences(packed_rows, self.seq_length)

    # -- bad samples ---------------------------------------------------------------------------------
    def _where(self, schedule: RankSchedule, index: int) -> str:
        locate = getattr(self.dataset, "locate", None) or schedule.order.locate
        shard, local = locate(index)
        return f"shard {shard} index {local} (dataset index {index})"

    def _count_unreadable(self, schedule: RankSchedule, step: int) -> None:
        try:
            plan = schedule.step_plan(step)
        except BadDataError as err:
            raise BadDataError(f"{err}; data.max_bad_fraction={self.max_bad_fraction} allows fewer: check the "
                               "shards (genlip shards verify) or raise the limit") from None
        for position, index, reason in plan.unreadable:
            log.warning("bad sample skipped while packing at position %d: %s: %s",
                        position, self._where(schedule, index), reason)
            self.bad_samples += 1
            self.handled_samples += 1

    def _count_bad(self, schedule: RankSchedule, rows) -> None:
        for row in rows:
            for r in row:
                self.handled_samples += 1 + len(r.bad)
                for index, reason in r.bad:
                    log.warning("bad sample replaced at position %d: %s: %s",
                                r.slot.position, self._where(schedule, index), reason)
                self.bad_samples += len(r.bad)
        allowed = self.max_bad_fraction * max(self.handled_samples, MIN_SAMPLES_FOR_BAD_FRACTION)
        if self.bad_samples > allowed:
            raise BadDataError(
                f"{self.bad_samples} of {self.handled_samples} samples on this rank failed to read or decode, "
                f"more than data.max_bad_fraction={self.max_bad_fraction}; see the warnings above for shard "
                f"and index of each, and check the shards (genlip shards verify) or raise the limit")
