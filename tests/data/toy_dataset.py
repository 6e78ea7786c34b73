"""Small real-image datasets for the data-path tests: list-backed, with the shard reader's interface.

Images are real (Fashion-MNIST from the Debian package; scikit-learn's two sample photos), encoded to
JPEG with Pillow; captions are "a photo of a {class} ." as word ids.
"""

from __future__ import annotations

import gzip
import io
from typing import NamedTuple

import numpy as np
from PIL import Image

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
FASHION_LABELS = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
SAMPLE_ID_BASE = 1000
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


class ToySample(NamedTuple):
    image: np.ndarray
    tokens: np.ndarray
    height: int
    width: int
    key: str


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


class ListDataset:
    """Samples in memory, split into shards of the given sizes; `broken` indices raise on read."""

    def __init__(self, samples: list[ToySample], shard_sizes: list[int], broken: set[int] = frozenset()):
        assert sum(shard_sizes) == len(samples)
        self.samples, self.shard_sizes, self.broken = samples, list(shard_sizes), set(broken)
        self.num_shards = len(shard_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(shard_sizes)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> ToySample:
        if i in self.broken:
            raise OSError(f"unreadable shard region at sample {i}")
        return self.samples[i]

    def locate(self, i: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return shard, int(i - self.offsets[shard])


def fashion_samples(n: int, caption_words: int = 0) -> list[ToySample]:
    """n Fashion-MNIST test images as RGB JPEGs, captions of 7 + (i % (caption_words + 1)) ids."""
    with gzip.open(FASHION) as f:
        pixels = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(FASHION_LABELS) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    samples = []
    for i, (img, label) in enumerate(zip(pixels, labels)):
        rgb = np.repeat(img[:, :, None], 3, axis=2)
        # ids: 1 "a", 2 "photo", 3 "of", 10+label the class, 4 ".", 5.. filler words for length variety
        # ... and a last id 1000 + i so tests can tell which sample sits where
        filler = [5 + (i + j) % 7 for j in range(i % (caption_words + 1))]
        tokens = np.array([1, 2, 3, 1, 10 + int(label), 4, *filler, SAMPLE_ID_BASE + i], dtype=np.int32)
        samples.append(ToySample(encode_jpeg(rgb), tokens, 28, 28, f"fmnist-{i}"))
    return samples


def photo_samples(sizes: list[tuple[int, int]]) -> list[ToySample]:
    """Crops of scikit-learn's sample photos at the given (height, width), as JPEGs."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427 x 640 RGB photos
    samples = []
    for i, (h, w) in enumerate(sizes):
        src = photos[i % 2]
        # resize the whole photo (keeps real image statistics) to the requested size
        rgb = np.asarray(Image.fromarray(src).resize((w, h), Image.BICUBIC))
        samples.append(ToySample(encode_jpeg(rgb), np.arange(1, 2 + i % 5, dtype=np.int32), h, w, f"photo-{i}"))
    return samples


def sample_ids(tokens) -> list[int]:
    """Dataset indices of the fashion samples in a tokens tensor, in sequence order."""
    flat = np.asarray(tokens).reshape(-1)
    return [int(t) - SAMPLE_ID_BASE for t in flat if t >= SAMPLE_ID_BASE]
