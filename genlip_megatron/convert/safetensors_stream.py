"""Write a (sharded) safetensors checkpoint one tensor at a time, in the Hugging Face layout.

`safetensors.torch.save_file` needs every tensor of a file in memory at once (and copies each to
bytes). Here the caller first gives the plan (name, shape, dtype of every tensor, in the order they
will arrive), the shards and headers are fixed from it, and then each tensor is written to disk the
moment it is produced: memory holds one tensor, never a shard.

File format (github.com/huggingface/safetensors): 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} padded with spaces to a
multiple of 8, then the raw little-endian bytes of every tensor back to back.
Sharding: model-0000k-of-0000n.safetensors + model.safetensors.index.json, as transformers writes.
"""

from __future__ import annotations

import json
import math
import os
import struct

import torch

DTYPE_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def plan_shards(plan: list[tuple[str, tuple, torch.dtype]], max_shard_bytes: int) -> list[list[int]]:
    """Split the plan (in arrival order) into consecutive shards of at most max_shard_bytes
    (a tensor larger than that gets a shard of its own)."""
    shards, size = [[]], 0
    for i, (_, shape, dtype) in enumerate(plan):
        n = _nbytes(shape, dtype)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


def _header(entries: list[tuple[str, tuple, torch.dtype]]) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype in entries:
        n = _nbytes(shape, dtype)
        header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


class ShardedSafetensorsWriter:
    """`write(name, tensor)` in exactly the planned order; `close()` checks nothing was skipped."""

    def __init__(self, folder: str, plan: list[tuple[str, tuple, torch.dtype]], max_shard_bytes: int):
        for name, _, dtype in plan:
            if dtype not in DTYPE_CODES:
                raise ValueError(f"{name}: dtype {dtype} cannot be written (supported: {list(DTYPE_CODES)})")
        self.folder, self.plan = folder, plan
        self.shards = plan_shards(plan, max_shard_bytes)
        n = len(self.shards)
        self.files = [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self._shard_of = {i: k for k, members in enumerate(self.shards) for i in members}
        self._next, self._file, self._open_shard = 0, None, -1

    def _open(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(os.path.join(self.folder, self.files[shard]), "wb")
        header = _header([self.plan[i] for i in self.shards[shard]])
        self._file.write(struct.pack("<Q", len(header)) + header)
        self._open_shard = shard

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected, shape, dtype = self.plan[self._next]
        if name != expected or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise ValueError(f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} arrived where the plan "
                             f"has {expected} {tuple(shape)} {dtype}")
        shard = self._shard_of[self._next]
        if shard != self._open_shard:
            self._open(shard)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._next += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._next != len(self.plan):
            raise ValueError(f"only {self._next} of {len(self.plan)} planned tensors were written")
        if len(self.files) > 1:
            weight_map = {self.plan[i][0]: self.files[k] for k, members in enumerate(self.shards) for i in members}
            total = sum(_nbytes(s, d) for _, s, d in self.plan)
            with open(os.path.join(self.folder, INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
