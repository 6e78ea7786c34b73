"""A dataset = a folder of shards + `manifest.json` + the `tokenizer.json` they were made with.

`open_dataset(path)` is what training reads: global sample i -> (shard, local index) by a binary
search over cumulative shard sizes, each shard opened (and validated) on first use, so a dataset of
thousands of shards opens instantly. The manifest's per-shard tokenizer and sample counts are
checked against each shard's own index, which is how a shard made with another tokenizer is refused.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from dataclasses import asdict, dataclass, field

from genlip_megatron.data.shards import Sample, ShardError, ShardReader

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "genlip-shards"
FORMAT_VERSION = 1


@dataclass
class ShardEntry:
    name: str  # path prefix relative to the manifest's folder (no .bin/.idx suffix)
    num_samples: int
    bin_bytes: int
    bin_sha256: str
    idx_sha256: str


@dataclass
class Manifest:
    tokenizer: dict  # name, sha256, file (relative), vocab_size, end_ids, pad_id
    prompt_template: str
    settings: dict  # creation settings of `genlip shards build`
    shards: list[ShardEntry]
    rejects: dict = field(default_factory=dict)  # reason -> count, over the whole build
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    root: str = ""  # folder holding the manifest; not serialised

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def tokenizer_path(self) -> str:
        return os.path.join(self.root, self.tokenizer["file"])

    def shard_prefix(self, i: int) -> str:
        return os.path.join(self.root, self.shards[i].name)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("root")
        data["num_samples"] = self.num_samples
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: str) -> "Manifest":
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot read manifest ({exc})") from None
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
        data.pop("num_samples", None)
        try:
            shards = [ShardEntry(**s) for s in data.pop("shards")]
            return cls(shards=shards, root=os.path.dirname(os.path.abspath(path)), **data)
        except TypeError as exc:
            raise ShardError(f"{path}: malformed manifest ({exc})") from None


class ShardedDataset:
    """All shards of a manifest as one random-access sequence of `Sample`s."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.shard_sizes = [s.num_samples for s in manifest.shards]
        self._starts = [0, *itertools.accumulate(self.shard_sizes)]
        self._readers: list[ShardReader | None] = [None] * len(self.shard_sizes)

    def __getstate__(self) -> dict:
        # Sent to worker processes without the open (memory-mapped) readers; they reopen lazily.
        return {**self.__dict__, "_readers": [None] * len(self.shard_sizes)}

    @property
    def num_shards(self) -> int:
        return len(self.shard_sizes)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a dataset of {len(self)}")
        shard = bisect.bisect_right(self._starts, i) - 1
        return shard, i - self._starts[shard]

    def shard(self, s: int) -> ShardReader:
        reader = self._readers[s]
        if reader is None:
            reader = self._readers[s] = self._open(s)
        return reader

    def _open(self, s: int) -> ShardReader:
        entry, prefix = self.manifest.shards[s], self.manifest.shard_prefix(s)
        reader = ShardReader(prefix)
        if reader.tokenizer_sha256 != self.manifest.tokenizer["sha256"]:
            raise ShardError(
                f"{prefix}.idx: made with tokenizer {reader.tokenizer_sha256[:12]}, the manifest's is "
                f"{self.manifest.tokenizer['name']} {self.manifest.tokenizer['sha256'][:12]}; "
                "refusing to mix tokenizers"
            )
        if len(reader) != entry.num_samples:
            raise ShardError(f"{prefix}.idx: {len(reader)} samples, manifest says {entry.num_samples}")
        return reader

    def check_all(self) -> None:
        """Open (and so validate) every shard now instead of on first use."""
        for s in range(self.num_shards):
            self.shard(s)

    def __getitem__(self, i: int) -> Sample:
        shard, local = self.locate(i)
        return self.shard(shard)[local]


def open_dataset(manifest_path: str, check_all: bool = False) -> ShardedDataset:
    """Open a dataset by its manifest.json (or the folder holding it)."""
    dataset = ShardedDataset(Manifest.load(manifest_path))
    if check_all:
        dataset.check_all()
    return dataset
