"""Fashion-MNIST (Debian `dataset-fashion-mnist`) -> a folder of PNG images + a captions JSONL.

Run:    python -m data_tools.fashion_mnist --out data/fmnist --train 20000 --test 1000
Writes: OUT/train/captions.jsonl + OUT/train/images/*.png   (input of `genlip shards build`)
        OUT/test/captions.jsonl  + OUT/test/images/*.png    (held out: zero-shot, probe, caption loss)
        OUT/classes.txt (one plain class name a line, label order)
        OUT/zero_shot.json {"class_names", "templates", "captions": [class][template] filled texts}

Each JSONL line is {"key", "image" (path relative to the JSONL's folder), "caption", "label",
"class_name"}; build shards with `--caption-field caption`. Training captions come from a few templates
("a photo of a {name}.", ...) so the model learns the class word, not one fixed sentence; the template
is picked by a seeded generator, so the same arguments always write the same files. Test captions all
use the first template (a stable held-out caption loss); zero-shot scoring reads the filled
captions of `zero_shot.json`, never the test captions, so evaluation needs no template logic.

The 28 x 28 grey images stay 28 x 28 (the tiny_cpu preset reads them in 4 x 4 patches, 49 tokens).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys

import numpy as np
from PIL import Image

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {  # split -> (images, labels), the names of the original release
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Label order of the original release; names in the words a caption would use ("T-shirt/top" ->
# "t-shirt": a slash is not something a captioner writes, and "top" would collide with other tops).
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TEMPLATES = [
    "a photo of {a} {name}.",
    "a picture of {a} {name}.",
    "a black and white photo of {a} {name}.",
    "a small photo of {a} {name}.",
    "{a} {name} on a dark background.",
]


def fill_template(template: str, name: str) -> str:
    """Insert a class name with its indefinite article ("an ankle boot", "a bag")."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    text = template.format(a=article, name=name)
    return text[:1].upper() + text[1:] if template.startswith("{a}") else text


def read_idx(path: str) -> np.ndarray:
    """Read one (optionally gzipped) IDX file: big-endian magic (0, 0, dtype code, ndim), then the
    ndim dimension sizes as uint32, then the raw values. Only uint8 (code 0x08) occurs here."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {values.size} values for shape {shape}")
    return values.reshape(shape)


def load_split(split: str, root: str = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of "train" (60,000) or "test" (10,000)."""
    images_file, labels_file = FILES[split]
    images = read_idx(os.path.join(root, images_file))
    labels = read_idx(os.path.join(root, labels_file)).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def subset_indices(total: int, count: int | None, seed: int) -> np.ndarray:
    """The first `count` of a seeded permutation, sorted: a deterministic, class-mixed subset."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).permutation(total)[:count])


def write_split(out_dir: str, split: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                seed: int) -> str:
    """Write OUT/<split>/images/*.png and OUT/<split>/captions.jsonl; return the JSONL path."""
    folder = os.path.join(out_dir, split)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    choices = rng.integers(0, len(TEMPLATES), size=len(indices)) if split == "train" else np.zeros(len(indices), int)
    jsonl = os.path.join(folder, "captions.jsonl")
    with open(jsonl + ".tmp", "w", encoding="utf-8") as f:
        for index, template in zip(indices.tolist(), choices.tolist()):
            relative = f"images/{split}-{index:05d}.png"
            Image.fromarray(images[index], mode="L").save(os.path.join(folder, relative))
            label = int(labels[index])
            name = CLASS_NAMES[label]
            record = {"key": f"{split}-{index:05d}", "image": relative,
                      "caption": fill_template(TEMPLATES[template], name), "label": label, "class_name": name}
            f.write(json.dumps(record) + "\n")
    os.replace(jsonl + ".tmp", jsonl)
    return jsonl


def convert(out_dir: str, train: int | None = None, test: int | None = None, seed: int = 0,
            root: str = DEFAULT_ROOT) -> dict[str, str]:
    """Write both splits, classes.txt and zero_shot.json; return {"train": jsonl, "test": jsonl, ...}."""
    paths = {}
    for split, count in (("train", train), ("test", test)):
        images, labels = load_split(split, root)
        paths[split] = write_split(out_dir, split, images, labels, subset_indices(len(labels), count, seed), seed)
    paths["classes"] = os.path.join(out_dir, "classes.txt")
    with open(paths["classes"], "w", encoding="utf-8") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    paths["zero_shot"] = os.path.join(out_dir, "zero_shot.json")
    captions = [[fill_template(t, name) for t in TEMPLATES] for name in CLASS_NAMES]
    with open(paths["zero_shot"], "w", encoding="utf-8") as f:
        json.dump({"class_names": CLASS_NAMES, "templates": TEMPLATES, "captions": captions}, f, indent=1)
    return paths


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, help="train images to keep (default: all 60,000)")
    parser.add_argument("--test", type=int, help="test images to keep (default: all 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="folder of the *-ubyte.gz files")
    args = parser.parse_args(argv)
    try:
        paths = convert(args.out, args.train, args.test, args.seed, args.root)
    except (OSError, ValueError) as exc:
        print(f"error: {exc} (Debian: apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
