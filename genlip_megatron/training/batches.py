"""Batch sources: what the trainer pulls micro-batches (docs/batch.md) from, and can checkpoint.

A batch source has `next() -> PackedBatch` (one micro-batch of this data-parallel rank), `state_dict()` and
`load_state_dict(state)`; the state describes the position at the end of the last COMPLETE step
(the trainer always pulls a whole step's micro-batches before it computes). Every rank of a
data-parallel replica (its TP and PP peers) builds the same source and reads the same micro-batches:
every pipeline stage needs positions and masks, and the last one labels.

- `SyntheticBatches`: deterministic random packed sequences; sequence i of the global order is a
  pure function of (seed, i), so the global batch is the same under any DP size and a resume from
  `consumed_sequences` is exact. For tests and benchmarks (`train.synthetic_data=true`).
- `LoaderBatches`: the real shard loader (genlip_megatron/data/loader.py) behind the same interface.
"""

from __future__ import annotations

import numpy as np

from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.data.packed_batch import PackedBatch
from genlip_megatron.data.packing import pack_sequences
from genlip_megatron.data.run_loader import checked_text_layout  # noqa: F401 - part of this module's API
from genlip_megatron.data.sample_sequence import TextLayout, build_sample_sequence


class SyntheticBatches:
    """Random image-caption samples packed into sequences of `seq_length`.

    Each sequence holds 1..k samples of a `grid x grid` patch image (grid = image_size / patch) and a
    caption of random length, packed greedily while they fit. Pixels ~ U[-1, 1], token ids in
    [1, vocab). Micro-batch m of step n on DP rank r holds global sequences n*G + j for j in
    StepSplit.rows(r, m) (G = global_batch_size; config/step_split.py).
    """

    PROMPT_IDS = (1, 2)  # stands in for the tokenized prompt (no loss)
    END_IDS = (3,)  # end-of-turn (loss)
    TYPICAL_LONGEST_CAPTION = 256

    def __init__(self, cfg, dp_rank: int, dp_size: int):
        m, d, t = cfg.model, cfg.data, cfg.train
        self.split = StepSplit.of(cfg, dp_size)
        self.seed, self.seq_length, self.vocab = d.seed, d.seq_length, m.vocab_size
        self.patch, self.channels, self.grid = m.patch_size, m.num_channels, d.image_size // m.patch_size
        self.text = TextLayout(self.PROMPT_IDS, self.END_IDS, d.max_caption_tokens,
                               d.max_sample_tokens).capped(d.seq_length)
        # Drawn caption lengths: up to the caption cap, else up to a typical long caption.
        self.longest_caption = d.max_caption_tokens or self.TYPICAL_LONGEST_CAPTION
        self.global_batch = t.global_batch_size
        self.dp_rank = dp_rank
        self.consumed_sequences = 0  # global sequences of completed steps
        self._micro = 0  # micro-batches handed out in the current step

    @property
    def micro_batches_per_step(self) -> int:
        return self.split.micro_batches

    def _sample(self, rng: np.random.Generator, room: int):
        image_tokens = self.grid * self.grid
        fixed = image_tokens + len(self.PROMPT_IDS) + len(self.END_IDS)
        max_caption = min(self.longest_caption, room - fixed, self.text.max_sample_tokens - fixed)
        if max_caption < 1:
            return None
        caption = rng.integers(max(4, self.vocab // 8), self.vocab,
                               size=int(rng.integers(1, max_caption + 1)))
        seq = build_sample_sequence(self.grid, self.grid, caption, self.text)
        patches = rng.uniform(-1, 1, size=(image_tokens, self.channels * self.patch ** 2)).astype(np.float32)
        return seq, patches

    def sequence(self, index: int) -> list:
        """The samples of global sequence `index`: [(SampleSequence, patches [n_img, C*P*P])]."""
        rng = np.random.default_rng([self.seed, index])
        row, room = [], self.seq_length
        while True:
            sample = self._sample(rng, room)
            if sample is None or (row and rng.random() < 0.3):  # sometimes leave padding at the end
                break
            row.append(sample)
            room -= len(sample[0])
        if not row:
            raise ValueError(f"seq_length {self.seq_length} cannot hold one {self.grid}x{self.grid}-patch sample")
        return row

    def next(self) -> PackedBatch:
        rows = self.split.rows(self.dp_rank, self._micro)
        batch = pack_sequences([self.sequence(self.consumed_sequences + j) for j in rows], self.seq_length)
        self._micro += 1
        if self._micro == self.micro_batches_per_step:
            self._micro = 0
            self.consumed_sequences += self.global_batch
        return batch

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "consumed_sequences": self.consumed_sequences, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "synthetic" or state["seed"] != self.seed:
            raise ValueError(f"checkpoint data state {state} does not belong to synthetic data with seed {self.seed}")
        self.consumed_sequences, self._micro = int(state["consumed_sequences"]), 0


class LoaderBatches:
    """The shard loader (data/loader.py PackedLoader) as a batch source."""

    def __init__(self, loader):
        self.loader = loader
        self._iterator = None

    def next(self) -> PackedBatch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        return next(self._iterator)

    def state_dict(self) -> dict:
        return {"kind": "shards", **self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "shards":
            raise ValueError(f"checkpoint data state {state} does not come from the shard loader")
        self.loader.load_state_dict(state)
        self._iterator = None  # restart the stream at the restored position


def build_batch_source(cfg, dp_rank: int, dp_size: int):
    """The configured source: synthetic (train.synthetic_data) or the shards named by data.manifest."""
    if cfg.train.synthetic_data:
        return SyntheticBatches(cfg, dp_rank, dp_size)
    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: name a dataset manifest.json, or set "
                         "train.synthetic_data=true to train on synthetic batches")
    from genlip_megatron.data.run_loader import shard_loader

    return LoaderBatches(shard_loader(cfg, cfg.data.manifest, dp_rank, dp_size))
