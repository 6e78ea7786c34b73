"""A small real dataset (Fashion-MNIST PNGs -> BPE tokenizer -> shards) and a tiny model that trains on
it with `genlip train`, for tests that need the whole path: shards -> train -> eval / caption / export.

The dataset's folder is the only name the runs are given (`data.manifest=<folder>`); the model's
vocabulary is left unset so it is taken from the dataset's tokenizer.
"""

from __future__ import annotations

import os
import subprocess
import sys

# width 32, 2 layers, 28 x 28 images in 7 x 7 patches (16 image tokens), 64-token packed sequences.
TINY_REAL = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_attention_heads=4",
    "model.ffn_hidden_size=64", "model.mrope_section=[2,1,1]", "model.vocab_size=null",
    "model.make_vocab_size_divisible_by=8", "model.patch_size=7", "model.drop_path_rate=0.0",
    "data.image_size=28", "data.seq_length=64", "data.max_caption_tokens=16", "data.num_workers=0",
    "data.num_threads=1", "data.prompt=describe", "train.micro_batch_size=1", "train.global_batch_size=2",
    "train.step_timeout_s=300", "schedule.warmup_fraction=0.0", "optimizer.lr=1.0e-2",
    "logging.log_interval=1", "logging.progress_bar=false",
]


def build_dataset(root: str, train: int = 48, test: int = 12, folder: str = "shards") -> dict:
    """Fashion-MNIST subsets under root/data, a BPE tokenizer at root/tokenizer.json and shards of the
    training split in root/<folder> (tokenizer copied next to the manifest, as `genlip shards build` does).
    Returns {"train", "test", "zero_shot", "tokenizer", "shards"} (absolute paths)."""
    from data_tools import fashion_mnist
    from data_tools.build import run_build
    from data_tools.captions import CaptionSettings
    from data_tools.merge import merge
    from data_tools.unit import BuildSettings
    from genlip_megatron.data.tokenizer import train_bpe

    paths = fashion_mnist.convert(os.path.join(root, "data"), train, test, seed=0)
    paths["tokenizer"] = os.path.join(root, "tokenizer.json")
    captions = [r["caption"] for r in fashion_mnist.read_jsonl(paths["train"])] + ["describe"] * 4
    train_bpe(captions * 4, 300, paths["tokenizer"], min_frequency=1)
    paths["shards"] = os.path.join(root, folder)
    settings = BuildSettings(caption=CaptionSettings(fields=("caption",)))
    result = run_build([paths["train"]], paths["shards"], paths["tokenizer"], settings, "describe", progress=False)
    assert not result["failed"], result
    merge(paths["shards"])
    return {k: os.path.abspath(v) for k, v in paths.items()}


def genlip(args: list[str], cwd: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`genlip ARGS` in a fresh process started in `cwd` (one CPU thread)."""
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "genlip_megatron.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
