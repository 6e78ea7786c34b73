"""Synthetic inputs in img2dataset's WebDataset layout, for tests and benchmarks (no network)."""

from __future__ import annotations

import io
import tarfile
from typing import Iterable

import numpy as np
import simplejpeg

WORDS = ("red green blue small large photo drawing of a the cat dog house tree car on with near "
         "beside under two three old new bright dark").split()


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Low-frequency colour field (compresses like a photo, unlike pure noise) as uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(height // 8, 2), max(width // 8, 2), 3)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1, height).astype(int)
    xs = np.linspace(0, coarse.shape[1] - 1, width).astype(int)
    image = coarse[ys][:, xs] + rng.normal(0, 8, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_jpeg(height: int, width: int, seed: int, quality: int = 90) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(smooth_image(height, width, seed)), quality=quality)


def make_caption(seed: int, words: int = 12) -> str:
    rng = np.random.default_rng(seed + 7919)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=words))


def write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    """Write (name, data) members in order with fixed metadata, so the tar is reproducible."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def sample_members(key: str, image: bytes, caption: str | None, image_ext: str = "jpg",
                   json_fields: dict | None = None) -> list[tuple[str, bytes]]:
    import json

    members = [(f"{key}.{image_ext}", image)]
    if caption is not None:
        members.append((f"{key}.txt", caption.encode()))
    if json_fields is not None:
        members.append((f"{key}.json", json.dumps(json_fields).encode()))
    return members


def write_synthetic_tar(path: str, num_samples: int, first: int = 0, size: tuple[int, int] = (32, 32),
                        distinct_images: int = 64) -> None:
    """img2dataset-style tar: `<shard>/<key>.jpg` + `.txt` + `.json` (with re_/org_caption).

    Only `distinct_images` images are encoded and then reused, so large tars are cheap to make.
    """
    images = [make_jpeg(size[0], size[1], seed) for seed in range(distinct_images)]

    def members():
        for i in range(first, first + num_samples):
            caption = make_caption(i)
            yield from sample_members(f"{i:09d}", images[i % distinct_images], caption,
                                      json_fields={"re_caption": "recap " + caption, "org_caption": caption})

    write_tar(path, members())
