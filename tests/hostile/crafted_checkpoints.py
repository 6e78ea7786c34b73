"""A genuine tiny training run, and every way to craft its checkpoint folder into a hostile one.

`train_tiny` runs in a pooled rank (tests/multiproc.py). Each `craft_*` function edits a COPY of the
genuine checkpoint folder in place and returns the file a refusal must name. The payload cases plant
the classic pickle exploit (harness.Marker) where each pickled part of a checkpoint lives.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import subprocess
import sys
import zipfile

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

VOCAB = 300  # >= the test tokenizer's vocabulary, so that a genuine caption/eval run completes
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_attention_heads=4",
    "model.ffn_hidden_size=64", "model.mrope_section=[2,1,1]", f"model.vocab_size={VOCAB}",
    "model.make_vocab_size_divisible_by=8", "model.patch_size=4", "model.drop_path_rate=0.1",
    "data.image_size=8", "data.seq_length=32", "data.max_caption_tokens=8",
    "train.micro_batch_size=1", "train.global_batch_size=2", "train.synthetic_data=true",
    "train.device=cpu", "train.step_timeout_s=300", "schedule.warmup_fraction=0.25",
    "logging.log_interval=1", "logging.progress_bar=false", "checkpoint.save_interval=2",
]


def train_tiny(run_dir: str, steps: int) -> dict:
    """Pool-rank function: train `steps` steps into run_dir (checkpoints every 2 steps)."""
    from genlip_megatron.config.load import load_config
    from genlip_megatron.training.trainer import run_training

    # a resume that trains longer names the change (training/resume_policy.py); a fresh run ignores it
    cfg = load_config("tiny_cpu", TINY + [f"checkpoint.dir={run_dir}", f"schedule.train_iters={steps}",
                                          "checkpoint.allow_changes=[schedule.train_iters]"])
    outcome = run_training(cfg)
    return {"exit_code": outcome.exit_code, "losses": outcome.losses}


def resume_error(run_dir: str, steps: int) -> str:
    """Pool-rank function: resume run_dir as `genlip train` would; the refusal's message, or ''."""
    from genlip_megatron.checkpoint.run_dir import CheckpointError

    try:
        train_tiny(run_dir, steps)
    except CheckpointError as exc:
        return str(exc)
    return ""


# ---- editing a checkpoint folder ------------------------------------------------------------------
def _metadata(folder: str):
    with open(os.path.join(folder, ".metadata"), "rb") as f:
        return pickle.load(f)  # our own genuine file, read to be edited


def _write_metadata(folder: str, md) -> None:
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(md, f)


def _torch_bytes(obj, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    if not deflate:
        return buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


def _replace_entry(folder: str, key_prefix: str, data: bytes) -> str:
    """Append `data` to the entry's .distcp file and point the entry at it; returns that file."""
    md = _metadata(folder)
    index = next(i for i in md.storage_data if i.fqn.startswith(key_prefix))
    info = md.storage_data[index]
    path = os.path.join(folder, info.relative_path)
    info.offset, info.length = os.path.getsize(path), len(data)
    with open(path, "ab") as f:
        f.write(data)
    _write_metadata(folder, md)
    return info.relative_path


def _edit_common(folder: str, edit) -> str:
    path = os.path.join(folder, "common.pt")
    common = torch.load(path, weights_only=True)
    result = edit(common)
    with open(path, "wb") as f:
        f.write(result if isinstance(result, bytes) else _torch_bytes(common))
    return "common.pt"


def _object_key(folder: str) -> str:
    md = _metadata(folder)
    return next(k for k, v in md.state_dict_metadata.items()
                if isinstance(v, BytesStorageMetadata) and k.startswith("rng_state"))


# The three places a checkpoint pickles (the crafted checkpoint), each with the exploit.
def payload_in_metadata(folder: str, marker) -> str:
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(marker.reduce(), f)
    return ".metadata"


def payload_in_distcp_object(folder: str, marker) -> str:
    return _replace_entry(folder, _object_key(folder), _torch_bytes([marker.reduce()]))


def payload_in_common(folder: str, marker) -> str:
    return _edit_common(folder, lambda c: c["scheduler"].__setitem__("hook", marker.reduce()))


# Neighbours: the same three places, other payload positions and other malformed contents.
def payload_inside_genuine_metadata(folder: str, marker) -> str:
    md = _metadata(folder)
    md.storage_meta = marker.reduce()
    _write_metadata(folder, md)
    return ".metadata"


def payload_in_distcp_tensor(folder: str, marker) -> str:
    return _replace_entry(folder, "embedding.patch_embedding.weight", _torch_bytes([marker.reduce()]) * 64)


def metadata_truncated(folder: str, marker) -> str:
    path = os.path.join(folder, ".metadata")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return ".metadata"


def metadata_garbage(folder: str, marker) -> str:
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        f.write(os.urandom(4096))
    return ".metadata"


def metadata_empty(folder: str, marker) -> str:
    open(os.path.join(folder, ".metadata"), "wb").close()
    return ".metadata"


def metadata_numpy_global(folder: str, marker) -> str:
    md = _metadata(folder)
    md.planner_data = np.arange(4)
    _write_metadata(folder, md)
    return ".metadata"


def metadata_path_escape(folder: str, marker) -> str:
    md = _metadata(folder)
    for info in md.storage_data.values():
        info.relative_path = "../../" + info.relative_path
    _write_metadata(folder, md)
    return ".metadata"


def metadata_compressed_storage(folder: str, marker) -> str:
    md = _metadata(folder)
    next(iter(md.storage_data.values())).transform_descriptors = ["zstd"]
    _write_metadata(folder, md)
    return ".metadata"


def metadata_huge_shape(folder: str, marker) -> str:
    """A 4 TB tensor claimed by a few bytes of metadata: a reader must not allocate it."""
    md = _metadata(folder)
    item = md.state_dict_metadata["embedding.patch_embedding.weight"]
    item.size = torch.Size([10 ** 6, 10 ** 6])
    item.chunks[0].sizes = torch.Size([10 ** 6, 10 ** 6])
    _write_metadata(folder, md)
    return ".metadata"


def metadata_offset_past_end(folder: str, marker) -> str:
    md = _metadata(folder)
    next(iter(md.storage_data.values())).offset = 10 ** 12
    _write_metadata(folder, md)
    return ".metadata"


def metadata_missing(folder: str, marker) -> str:
    os.remove(os.path.join(folder, ".metadata"))
    return ".metadata"


def backend_not_torch_dist(folder: str, marker) -> str:
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        f.write('{"sharded_backend": "zarr", "sharded_backend_version": 1}')
    return "metadata.json"


def backend_garbage(folder: str, marker) -> str:
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        f.write("[" * 100000)
    return "metadata.json"


def distcp_tensor_deflated(folder: str, marker) -> str:
    """A compressed torch.save zip where a tensor belongs (a zip bomb's shape)."""
    return _replace_entry(folder, "embedding.patch_embedding.weight",
                          b"\0" * 8192 + _torch_bytes(torch.zeros(32, 48), deflate=True))


def distcp_truncated(folder: str, marker) -> str:
    md = _metadata(folder)
    name = next(iter(md.storage_data.values())).relative_path
    path = os.path.join(folder, name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    return name


def distcp_missing(folder: str, marker) -> str:
    md = _metadata(folder)
    name = next(iter(md.storage_data.values())).relative_path
    os.remove(os.path.join(folder, name))
    return name


def common_numpy(folder: str, marker) -> str:
    """numpy arrays pass torch's weights_only loader (megatron-core allow-lists them): not plain data."""
    return _edit_common(folder, lambda c: c["data"].__setitem__("state", np.arange(3)))


def common_namespace(folder: str, marker) -> str:
    from argparse import Namespace

    return _edit_common(folder, lambda c: c.__setitem__("args", Namespace(lr=1.0)))


def common_deflated(folder: str, marker) -> str:
    return _edit_common(folder, lambda c: _torch_bytes(c, deflate=True))


def common_truncated(folder: str, marker) -> str:
    return _edit_common(folder, lambda c: _torch_bytes(c)[:300])


def common_not_a_dict(folder: str, marker) -> str:
    return _edit_common(folder, lambda c: _torch_bytes([1, 2, 3]))


def common_missing(folder: str, marker) -> str:
    os.remove(os.path.join(folder, "common.pt"))
    return "common.pt"


# A folder missing one of these is incomplete: resume and conversion of the RUN fall back past it.
INCOMPLETE = [metadata_missing, common_missing]
PAYLOADS = [payload_in_metadata, payload_in_distcp_object, payload_in_common]
NEIGHBOURS = [
    payload_inside_genuine_metadata, payload_in_distcp_tensor, metadata_truncated, metadata_garbage,
    metadata_empty, metadata_numpy_global, metadata_path_escape, metadata_compressed_storage,
    metadata_huge_shape, metadata_offset_past_end, metadata_missing, backend_not_torch_dist,
    backend_garbage, distcp_tensor_deflated, distcp_truncated, distcp_missing, common_numpy,
    common_namespace, common_deflated, common_truncated, common_not_a_dict, common_missing,
]


def train_tiny_cli(run_dir, steps: int) -> subprocess.CompletedProcess:
    """`genlip train tiny_cpu` (the TINY settings) as its own single-rank process, resuming whatever
    run_dir holds with the schedule extended to `steps` (named, as a longer run must be)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "genlip_megatron.cli", "train", "tiny_cpu", *TINY,
                           f"checkpoint.dir={run_dir}", f"schedule.train_iters={steps}",
                           "checkpoint.allow_changes=[schedule.train_iters]"],
                          capture_output=True, text=True, timeout=280, env=env)
