"""Read the model tensors of a megatron-core distributed checkpoint (torch_dist) one at a time.

No process group, no megatron-core import, no model: the folder's torch.distributed.checkpoint
metadata lists every tensor's GLOBAL shape and the stored chunks (one per saving rank and layer);
`load(name)` reads only the chunks that overlap the requested tensor. Memory therefore stays at
about one tensor (plus one stored chunk) whatever the model size and the layout it was saved in.

What a training checkpoint looks like on disk (checkpoint/sharded.py, mcore 0.16.1):
    metadata.json   {"sharded_backend": "torch_dist", ...}
    .metadata       torch DCP metadata; __<rank>_<n>.distcp data files
    common.pt       rank 0's non-tensor state: format_version, iteration, config (dict), layout, ...
Transformer layers are stored STACKED: `decoder.layers.self_attention.linear_qkv.weight` has a leading
axis of num_layers (global layer index, pipeline offsets already applied). This reader presents them
as `decoder.layers.<i>.self_attention.linear_qkv.weight`, the names `convert.mcore_names` uses (and
AIMv2's `encoder.layers.<i>.*` likewise).
Optimizer state (`optimizer.*`) and ShardedObjects (`*_extra_state`, `rng_state`) are not model tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from genlip_megatron.checkpoint.run_dir import CheckpointError, read_run_config, resolve_checkpoint
from genlip_megatron.checkpoint.safe_load import SafeFileSystemReader, check_backend, load_common

_STACKS = ("decoder.layers.", "encoder.layers.")  # transformer blocks stored stacked (GenLIP; AIMv2 has both)
NON_MODEL_PREFIXES = ("optimizer.", "rng_state")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ConversionError(CheckpointError):
    """A conversion (or a read for one) refused; str() is the one-line reason."""


class _ChunkPlanner:
    """The two LoadPlanner calls FileSystemReader.read_data makes: where each stored chunk goes."""

    def __init__(self, out: torch.Tensor):
        self.out = out  # dest_offsets of the read items are relative to this tensor

    def resolve_tensor(self, item):
        view = self.out
        for dim, (offset, length) in enumerate(zip(item.dest_offsets, item.lengths)):
            view = view.narrow(dim, offset, length)
        return view

    def commit_tensor(self, item, tensor) -> None:
        pass

    def load_bytes(self, item, data) -> None:  # pragma: no cover - model tensors only
        raise ConversionError(f"{item.storage_index.fqn}: a byte object where a tensor was expected")


class CheckpointReader(Mapping):
    """Mapping: per-layer megatron-core name -> tensor, read from disk on every access (no cache)."""

    def __init__(self, path: str):
        self.folder = resolve_checkpoint(path)
        check_backend(self.folder)
        # Every pickled part (.metadata, common.pt, stored objects, chunks) is read through
        # checkpoint/safe_load.py; the shard files were checked with the metadata.
        self._reader = SafeFileSystemReader(self.folder)
        self.metadata = self._reader.read_metadata()
        self._reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        self.common = load_common(self.folder)
        self._reader.check_objects()  # never used here, but a crafted one means a crafted folder
        self._index = self._build_index()

    def _build_index(self) -> dict[str, tuple[str, int | None, torch.Size, torch.dtype]]:
        """name -> (stored key, layer index or None, shape, dtype)."""
        index = {}
        for key, md in self.metadata.state_dict_metadata.items():
            if not isinstance(md, TensorStorageMetadata) or key.startswith(NON_MODEL_PREFIXES):
                continue
            dtype = md.properties.dtype
            if dtype not in SUPPORTED_DTYPES:
                raise ConversionError(f"{key}: dtype {dtype} is not one of {SUPPORTED_DTYPES}")
            covered = sum(math.prod(c.sizes) for c in md.chunks)
            if covered != math.prod(md.size):
                raise ConversionError(f"{key}: stored chunks cover {covered} of {math.prod(md.size)} "
                                      "elements (a shard is missing)")
            stack = next((s for s in _STACKS if key.startswith(s)), None)
            rest = key[len(stack):] if stack else ""
            if stack and not rest.split(".")[0].isdigit():
                for layer in range(md.size[0]):
                    index[f"{stack}{layer}.{rest}"] = (key, layer, torch.Size(md.size[1:]), dtype)
            else:
                index[key] = (key, None, torch.Size(md.size), dtype)
        if not index:
            raise ConversionError(f"{self.folder}: no model tensors in this checkpoint")
        return index

    def run_config(self):
        """The training Config saved with the checkpoint (its YAML file, else the common state's)."""
        return read_run_config(self.folder, self.common.get("config"))

    # ---- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.load(name)

    def __contains__(self, name) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    # ---- tensors ------------------------------------------------------------------------------
    def shape(self, name: str) -> torch.Size:
        return self._index[name][2]

    def dtype(self, name: str) -> torch.dtype:
        return self._index[name][3]

    def meta(self) -> dict[str, torch.Tensor]:
        """Every model tensor as a meta tensor (shape and dtype, no storage): for planning."""
        return {n: torch.empty(s, dtype=d, device="meta") for n, (_, _, s, d) in self._index.items()}

    def load(self, name: str) -> torch.Tensor:
        key, layer, shape, dtype = self._index[name]
        md = self.metadata.state_dict_metadata[key]
        offsets = (layer,) + (0,) * len(shape) if layer is not None else (0,) * len(shape)
        sizes = (1,) + tuple(shape) if layer is not None else tuple(shape)
        out = torch.empty(sizes, dtype=dtype)
        wanted = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        items = create_read_items_for_chunk_list(key, md, [wanted])
        self._reader.read_data(LoadPlan(items), _ChunkPlanner(out)).wait()
        return out[0] if layer is not None else out

    def largest_tensor_bytes(self) -> int:
        return max(math.prod(s) * d.itemsize for _, _, s, d in self._index.values())
