"""Datasets the loader must refuse rather than hang on or train on: every shard refused (here: shards
made with another tokenizer) ends planning after a bounded number of reads with one line naming a
shard; a few refused shards are skipped and counted; a refused shard costs one open, not one per
sample; `genlip train` on such a dataset, or with a swapped tokenizer.json, exits with one line."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
from data_harness import tokenizer_file

from data_tools import fashion_mnist
from data_tools.build import run_build
from data_tools.captions import CaptionSettings
from data_tools.merge import merge
from data_tools.sources import SourceSettings
from data_tools.unit import BuildSettings
from genlip_megatron.data import manifest as manifest_module
from genlip_megatron.data.image_geometry import ImageGeometry
from genlip_megatron.data.loader import BadDataError, PackedLoader
from genlip_megatron.data.manifest import load_tokenizer, open_dataset
from genlip_megatron.data.sample_sequence import TextLayout
from genlip_megatron.data.shards import ShardReader, ShardWriter
from genlip_megatron.data.tokenizer import train_bpe

pytestmark = pytest.mark.timeout(600)
SHARDS, PER_SHARD = 4, 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """256 Fashion-MNIST images with captions in 4 shards of 64."""
    root = tmp_path_factory.mktemp("fashion")
    paths = fashion_mnist.convert(str(root / "data"), SHARDS * PER_SHARD, 8, 0)
    settings = BuildSettings(source=SourceSettings(jsonl_lines_per_unit=PER_SHARD),
                             caption=CaptionSettings(fields=("caption",)))
    out = str(root / "shards")
    run_build([paths["train"]], out, tokenizer_file(), settings, "Describe the image.", progress=False)
    merge(out)
    return out


def _with_foreign_tokenizer(dataset: str, dest, shards: list[int]) -> str:
    """A copy of the dataset whose listed shards claim another tokenizer (hashes otherwise valid)."""
    shutil.copytree(dataset, dest)
    for s in shards:
        prefix = os.path.join(dest, f"shard-{s:06d}")
        reader = ShardReader(prefix)
        with ShardWriter(prefix + ".x", "ab" * 32) as writer:
            for i in range(len(reader)):
                sample = reader[i]
                writer.add(sample.key, sample.image.tobytes(), sample.tokens, sample.height, sample.width)
            writer.close()
        del reader
        for suffix in (".bin", ".idx"):
            os.replace(prefix + ".x" + suffix, prefix + suffix)
    return str(dest)


class CountingDataset:
    """Delegates to a ShardedDataset and counts sample reads."""

    def __init__(self, inner):
        self.inner, self.reads = inner, 0
        self.shard_sizes, self.locate = inner.shard_sizes, inner.locate

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]


def _loader(dataset, fraction):
    return PackedLoader(dataset, ImageGeometry(patch_size=4, image_size=28), TextLayout((1,), (2,), 32), 128,
                        8, 1, 0, 1, seed=5, decoder="reference", max_bad_fraction=fraction)


@pytest.mark.parametrize("fraction,most_reads", [(0.001, 2), (0.05, 51), (1.0, SHARDS * PER_SHARD)])
def test_every_shard_refused_stops_planning_after_bounded_reads(dataset, tmp_path, monkeypatch, fraction, most_reads):
    opened = []
    monkeypatch.setattr(manifest_module, "ShardReader", lambda prefix: opened.append(prefix) or ShardReader(prefix))
    refused = _with_foreign_tokenizer(dataset, tmp_path / "ds", list(range(SHARDS)))
    counting = CountingDataset(open_dataset(refused))
    with pytest.raises(BadDataError) as info:
        next(iter(_loader(counting, fraction)))
    message = str(info.value)
    assert "\n" not in message and "refusing to mix tokenizers" in message and "shard-0000" in message
    assert f"data.max_bad_fraction={fraction}" in message
    assert counting.reads <= most_reads  # bounded work (it once scanned on forever, memory growing)
    assert len(opened) <= SHARDS  # a refused shard is opened once, not once per sample


def test_some_shards_refused_are_skipped_counted_and_never_trained_on(dataset, tmp_path, caplog):
    refused = _with_foreign_tokenizer(dataset, tmp_path / "ds", [1])
    loader = _loader(open_dataset(refused), fraction=0.5)
    batches = [b for _, b in zip(range(16), loader)]
    assert loader.bad_samples > 0 and len(batches) == 16
    assert "refusing to mix tokenizers" in caplog.text and "shard-000001" in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(manifest: str, run_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    overrides = [f"data.manifest={manifest}", f"checkpoint.dir={run_dir}", "schedule.train_iters=2",
                 "logging.progress_bar=false"]
    return subprocess.run([sys.executable, "-m", "genlip_megatron.cli", "train", "tiny_cpu", *overrides],
                          capture_output=True, text=True, timeout=400, env=env)


def _error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("genlip train: error: ")]


def test_training_on_a_dataset_it_cannot_use_exits_with_one_line(dataset, tmp_path):
    """Both cases in one test: each `genlip train` costs seconds of megatron start-up."""
    refused = _with_foreign_tokenizer(dataset, tmp_path / "refused", list(range(SHARDS)))
    proc = _train(os.path.join(refused, "manifest.json"), tmp_path / "run1")
    assert proc.returncode == 2
    (line,) = _error_lines(proc)
    assert "cannot be read" in line and "refusing to mix tokenizers" in line

    swapped = tmp_path / "swapped"
    shutil.copytree(dataset, swapped)
    train_bpe(["completely different words here"] * 20, 300, str(swapped / "tokenizer.json"), min_frequency=1)
    with pytest.raises(Exception, match="is not the tokenizer the shards were made with"):
        load_tokenizer(open_dataset(str(swapped)).manifest)
    proc = _train(str(swapped / "manifest.json"), tmp_path / "run2")
    assert proc.returncode == 2
    (line,) = _error_lines(proc)
    assert "tokenizer.json" in line and "is not the tokenizer the shards were made with" in line
