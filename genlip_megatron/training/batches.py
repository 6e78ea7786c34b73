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
from genlip_megatron.data.sample_sequence import TextLayout, build_sample_sequence


def checked_text_layout(cfg, tokenizer, max_image_tokens: int) -> TextLayout:
    """The prompt and end text around every caption and the sample caps, refused (ConfigError naming
    the key) when the tokenizer's ids do not fit model.vocab_size, the tokenizer lacks a token of
    data.end_text, or the largest image with the prompt leaves no caption token within the cap."""
    from genlip_megatron.config.load import ConfigError
    from genlip_megatron.data.tokenizer import end_text_ids

    d, m = cfg.data, cfg.model
    if tokenizer.vocab_size > m.vocab_size:
        raise ConfigError([f"model.vocab_size={m.vocab_size} is smaller than the {tokenizer.vocab_size} tokens "
                           f"of the dataset's tokenizer ({tokenizer.name}): its ids would index past the "
                           "embedding"])
    try:
        end = end_text_ids(tokenizer, d.end_text)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    text = TextLayout(tuple(tokenizer.encode(d.prompt)) if d.prompt else (), end,
                      d.max_caption_tokens, d.max_sample_tokens).capped(d.seq_length)
    cap_key = "data.max_sample_tokens" if d.max_sample_tokens is not None else "data.seq_length"
    room = text.max_sample_tokens - max_image_tokens  # longer samples are cut, but one must fit
    if room <= len(text.prompt_ids):
        raise ConfigError([f"data.prompt is {len(text.prompt_ids)} tokens: with up to {max_image_tokens} "
                           f"image tokens no caption token fits {cap_key}={text.max_sample_tokens}"])
    return text


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
    from genlip_megatron.data.image_geometry import ImageGeometry
    from genlip_megatron.data.loader import PackedLoader
    from genlip_megatron.data.manifest import load_tokenizer, open_dataset

    d, m, t = cfg.data, cfg.model, cfg.train
    dataset = open_dataset(d.manifest)
    tokenizer = load_tokenizer(dataset.manifest)  # the shards' own (hash) and ids within it (manifest)
    geometry = ImageGeometry(patch_size=m.patch_size, image_size=d.image_size,
                             native_resolution=d.native_resolution, min_pixels=d.min_pixels,
                             max_pixels=d.max_pixels, random_resized_crop=d.random_resized_crop,
                             crop_scale=tuple(d.crop_scale), seed=d.seed)
    text = checked_text_layout(cfg, tokenizer, geometry.max_image_tokens())
    loader = PackedLoader(dataset, geometry, text, d.seq_length, t.global_batch_size, t.micro_batch_size,
                          dp_rank, dp_size, d.seed, decoder="dali", decoder_device=d.decoder_device,
                          num_workers=d.num_workers, num_threads=d.num_threads,
                          max_bad_fraction=d.max_bad_fraction, vocab_size=tokenizer.vocab_size)
    return LoaderBatches(loader)
