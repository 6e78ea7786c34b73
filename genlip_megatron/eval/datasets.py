"""Evaluation data on disk: a captions JSONL with labels, and the zero-shot class captions.

A split is the JSONL `genlip shards build` reads ({"image": path relative to the JSONL's folder,
"caption", "label"}, e.g. data_tools/fashion_mnist.py's test split), read directly - evaluation needs
labels, which shards do not keep, and a few thousand images fit in memory.
The zero-shot file is {"class_names": [C], "captions": [C][K] texts} (K templates, already filled in).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from genlip_megatron.eval.images import load_image_file


@dataclass
class LabelledImages:
    images: torch.Tensor  # float [N, 3, H, W] in [-1, 1]
    labels: np.ndarray  # int64 [N] (-1 where a line has no label)
    captions: list[str]  # [N] ("" where a line has no caption)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> LabelledImages:
        return LabelledImages(self.images[:count], self.labels[:count], self.captions[:count])


def load_jsonl_split(path: str, image_size: int, limit: int | None = None, image_root: str | None = None
                     ) -> LabelledImages:
    """The first `limit` lines of a captions JSONL, images resized to image_size x image_size."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    images, labels, captions = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(images) >= limit:
                break
            if not line.strip():
                continue
            record = json.loads(line)
            images.append(load_image_file(os.path.join(root, record["image"]), image_size))
            labels.append(int(record.get("label", -1)))
            captions.append(str(record.get("caption", "")))
    if not images:
        raise ValueError(f"{path}: no samples")
    return LabelledImages(torch.stack(images), np.asarray(labels, dtype=np.int64), captions)


def load_zero_shot(path: str) -> tuple[list[str], list[list[str]]]:
    """(class names [C], captions [C][K]) from a zero-shot JSON file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    names, captions = list(data["class_names"]), [list(c) for c in data["captions"]]
    if len(names) != len(captions) or len({len(c) for c in captions}) != 1:
        raise ValueError(f"{path}: need one caption list per class, all of the same length")
    return names, captions
