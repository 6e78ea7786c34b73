"""A dataset = a folder of shards + `manifest.json` + the `tokenizer.json` they were made with.

`open_dataset(path)` is what training reads: global sample i -> (shard, local index) by a binary
search over cumulative shard sizes, each shard opened (and validated) on first use, so a dataset of
thousands of shards opens instantly. The manifest's per-shard tokenizer and sample counts are
checked against each shard's own index, which is how a shard made with another tokenizer is refused;
a shard refused once stays refused (its error is kept), so a bad shard costs one open, not one per
sample. `load_tokenizer(manifest)` opens the dataset's tokenizer.json, refusing one whose SHA-256
is not the manifest's or whose vocabulary is smaller than the largest token id in the shards.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field

from genlip_megatron.data.input_files import InputFileError, read_bounded
from genlip_megatron.data.shards import Sample, ShardError, ShardReader
from genlip_megatron.data.tokenizer import Tokenizer

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "genlip-shards"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 30


@dataclass
class ShardEntry:
    name: str  # path prefix relative to the manifest's folder (no .bin/.idx suffix)
    num_samples: int
    bin_bytes: int
    bin_sha256: str
    idx_sha256: str
    max_token_id: int | None = None  # largest caption token id in the shard (None: older manifests)


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

    @property
    def content_id(self) -> str:
        """The identity of what the dataset holds (shards by content, prompt, tokenizer), not where it
        lives: a copy in another folder has the same id (a resumed run may read its dataset from there)."""
        shards = [[s.name, s.num_samples, s.bin_sha256, s.idx_sha256] for s in self.shards]
        text = json.dumps([self.prompt_template, self.tokenizer.get("sha256"), shards])
        return hashlib.sha256(text.encode()).hexdigest()

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
            data = json.loads(read_bounded(path, MAX_MANIFEST_BYTES))
        except (InputFileError, ValueError, RecursionError) as exc:
            raise ShardError(f"{path}: cannot read manifest ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
        data.pop("num_samples", None)
        try:
            shards = [ShardEntry(**s) for s in data.pop("shards")]
            manifest = cls(shards=shards, root=os.path.dirname(os.path.abspath(path)), **data)
        except (TypeError, KeyError) as exc:
            raise ShardError(f"{path}: malformed manifest ({exc})") from None
        problem = _malformed(manifest)
        if problem:
            raise ShardError(f"{path}: malformed manifest ({problem})")
        return manifest


def _inside(name) -> bool:
    """A file named relative to the dataset folder and staying inside it."""
    return isinstance(name, str) and name != "" and not os.path.isabs(name) and ".." not in name.split("/")


def _malformed(m: Manifest) -> str | None:
    tok = m.tokenizer
    if not isinstance(tok, dict) or not _inside(tok.get("file")) or not isinstance(tok.get("sha256"), str):
        return "tokenizer needs file and sha256"
    if not isinstance(tok.get("vocab_size"), int) or not isinstance(m.prompt_template, str):
        return "tokenizer vocab_size or prompt_template"
    for s in m.shards:
        if not _inside(s.name) or not isinstance(s.num_samples, int) or s.num_samples < 0:
            return f"shard entry {str(s.name)[:100]!r}"
        if s.max_token_id is not None and not isinstance(s.max_token_id, int):
            return f"shard entry {s.name!r}: max_token_id"
    return None


def check_token_range(manifest: Manifest, vocab_size: int) -> None:
    """Refuse a dataset whose shards hold token ids >= vocab_size (from the manifest: O(shards))."""
    for entry in manifest.shards:
        if entry.max_token_id is not None and entry.max_token_id >= vocab_size:
            raise ShardError(f"{manifest.root}/{entry.name}: token id {entry.max_token_id} is outside the "
                             f"tokenizer's vocabulary of {vocab_size}")


def load_tokenizer(manifest: Manifest) -> Tokenizer:
    """The dataset's tokenizer.json, only if it is the one its shards were made with (ShardError)."""
    try:
        tokenizer = Tokenizer.from_file(manifest.tokenizer_path)
    except ValueError as exc:
        raise ShardError(str(exc)) from None
    expected = manifest.tokenizer["sha256"]
    if tokenizer.sha256 != expected:
        raise ShardError(f"{manifest.tokenizer_path}: sha256 {tokenizer.sha256[:12]} is not the tokenizer the "
                         f"shards were made with ({manifest.tokenizer.get('name')} {expected[:12]}); "
                         "restore the dataset's own tokenizer.json")
    check_token_range(manifest, tokenizer.vocab_size)
    return tokenizer


class ShardedDataset:
    """All shards of a manifest as one random-access sequence of `Sample`s."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.shard_sizes = [s.num_samples for s in manifest.shards]
        self._starts = [0, *itertools.accumulate(self.shard_sizes)]
        self._readers: list[ShardReader | None] = [None] * len(self.shard_sizes)
        self._refused: dict[int, ShardError] = {}  # shard -> why it cannot be used (kept: no retry per sample)

    def __getstate__(self) -> dict:
        # Sent to worker processes without the open (memory-mapped) readers; they reopen lazily.
        return {**self.__dict__, "_readers": [None] * len(self.shard_sizes), "_refused": {}}

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
            if s in self._refused:  # a fresh exception: re-raising one object would grow its traceback
                raise ShardError(str(self._refused[s]))
            try:
                reader = self._readers[s] = self._open(s)
            except ShardError as exc:
                self._refused[s] = exc
                raise
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
