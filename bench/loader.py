"""End-to-end loader throughput on CPU: shard read + decode + resize to 224 + normalise (+ pack).

    .venv/bin/python bench/loader.py            # ~1-2 minutes on 2 cores
    .venv/bin/python bench/loader.py --images 200 --repeats 1

Writes real shards (crops of scikit-learn's sample photos, ~500 x 375, JPEG q90) with the project's
ShardWriter, then times over the SAME shards, in one run, with 1 and 2 threads:
  ceiling        bare libjpeg-turbo decode (simplejpeg), nothing else
  simplejpeg+cv2 decode, cv2 INTER_AREA resize, normalise (no packing)
  pillow         Pillow decode + antialiased bilinear resize, normalise (no packing)
  loader/dali    PackedLoader with DALI CPU (antialias on, and off), full packed batches
Expect the DALI loader at >= 0.8x the ceiling with antialias off (resize is then nearly free).
Prints a table and writes bench/results/loader-<time>.json with hardware, commit and settings.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from genlip_megatron.data.image_geometry import ImageGeometry  # noqa: E402
from genlip_megatron.data.loader import PackedLoader  # noqa: E402
from genlip_megatron.data.sample_sequence import TextLayout  # noqa: E402
from genlip_megatron.data.shards import ShardReader, ShardWriter  # noqa: E402


class ShardList:
    """The loader's dataset interface over a few ShardReaders."""

    def __init__(self, prefixes):
        self.readers = [ShardReader(p) for p in prefixes]
        self.shard_sizes = [len(r) for r in self.readers]
        self.starts = np.concatenate([[0], np.cumsum(self.shard_sizes)])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.readers[shard][int(i - self.starts[shard])]


def write_shards(folder, num_images, num_shards=4):
    from sklearn.datasets import load_sample_images

    photos, rng = load_sample_images().images, np.random.default_rng(0)
    prefixes = [os.path.join(folder, f"shard-{s:03d}") for s in range(num_shards)]
    writers = [ShardWriter(p, tokenizer_sha256="0" * 64) for p in prefixes]
    for i in range(num_images):
        src = photos[i % 2]
        h, w = int(rng.integers(300, 427)), int(rng.integers(300, 640))
        y, x = int(rng.integers(0, 427 - h + 1)), int(rng.integers(0, 640 - w + 1))
        img = Image.fromarray(src[y : y + h, x : x + w]).resize((500, 375) if w >= h else (375, 500))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        writers[i % num_shards].add(f"img-{i}", buf.getvalue(), rng.integers(10, 1000, 20), img.height, img.width)
    for w in writers:
        w.close()
    return prefixes


def time_images(fn, dataset, threads):
    """images/s of fn(encoded bytes) over the whole dataset with a thread pool."""
    items = [dataset[i].image for i in range(len(dataset))]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items[:16]))  # warm-up
        t0 = time.perf_counter()
        list(pool.map(fn, items))
    return len(items) / (time.perf_counter() - t0)


def bare_decode(b):
    import simplejpeg

    return simplejpeg.decode_jpeg(memoryview(b), colorspace="RGB")


def simplejpeg_cv2(b):
    import cv2

    rgb = cv2.resize(bare_decode(b), (224, 224), interpolation=cv2.INTER_AREA)
    return (rgb.astype(np.float32).transpose(2, 0, 1) - 127.5) / 127.5


def pillow(b):
    with Image.open(io.BytesIO(bytes(b))) as img:
        rgb = np.asarray(img.convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32)
    return (rgb.transpose(2, 0, 1) - 127.5) / 127.5


def time_loader(dataset, threads, antialias, steps):
    geometry, text = ImageGeometry(patch_size=16, image_size=224), TextLayout((1, 2, 3), (4,), 64)
    loader = PackedLoader(dataset, geometry, text, seq_length=4096, global_batch_size=2, micro_batch_size=1,
                          dp_rank=0, dp_size=1, seed=0, num_workers=1, num_threads=threads, antialias=antialias)
    it = iter(loader)
    next(it)  # pipeline build and worker start are not throughput
    t0, images = time.perf_counter(), 0
    for _ in range(steps):
        images += int(next(it)["is_image"].sum()) // 196
    return images / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2, help="best of N (the machine may be shared)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dataset = ShardList(write_shards(folder, args.images))
        mb_images = 4096 // (196 + 3 + 20 + 1)  # images per packed sequence
        steps = max(4, args.images // mb_images)
        rows = []
        for threads in (1, 2):
            runs = {
                "ceiling (simplejpeg decode only)": lambda: time_images(bare_decode, dataset, threads),
                "simplejpeg + cv2 INTER_AREA": lambda: time_images(simplejpeg_cv2, dataset, threads),
                "pillow decode + resize": lambda: time_images(pillow, dataset, threads),
                "loader: DALI cpu, antialias": lambda: time_loader(dataset, threads, True, steps),
                "loader: DALI cpu, no antialias": lambda: time_loader(dataset, threads, False, steps),
            }
            for name, run in runs.items():
                rows.append({"pipeline": name, "threads": threads,
                             "images_per_s": max(run() for _ in range(args.repeats))})
    for r in rows:
        ceiling = next(x["images_per_s"] for x in rows if x["threads"] == r["threads"] and "ceiling" in x["pipeline"])
        r["vs_ceiling"] = r["images_per_s"] / ceiling
    print(f"{'pipeline':36s} {'threads':>7s} {'img/s':>8s} {'x ceiling':>9s}")
    for r in rows:
        print(f"{r['pipeline']:36s} {r['threads']:7d} {r['images_per_s']:8.0f} {r['vs_ceiling']:9.2f}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "none"
    result = {"bench": "loader", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit,
              "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_avg_1m": os.getloadavg()[0]},
              "settings": {"images": args.images, "source_size": "500x375 JPEG q90", "out": 224, "patch": 16,
                           "seq_length": 4096, "repeats": args.repeats, "dali_workers": 1},
              "rows": rows}
    out_dir = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"loader-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
