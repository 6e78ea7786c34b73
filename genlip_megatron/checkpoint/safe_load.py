"""Read the pickled parts of a checkpoint folder without letting the folder run code.

A torch_dist checkpoint (megatron-core dist_checkpointing) has three pickled parts, and a stock reader
unpickles all of them with the full `pickle` machinery, so a crafted folder runs any code it likes:
    .metadata        torch.distributed.checkpoint metadata (plain `pickle.load` in torch)
    __*_*.distcp     tensors (torch.load, weights_only) AND objects such as the RNG state or a layer's
                     `_extra_state` (torch.load with weights_only=False in torch's default planner)
    common.pt        rank 0's plain state (iteration, counters, scheduler, config, ...)
Every reader of this package goes through here instead:
    read_metadata(folder)      allow-list unpickler (only the DCP metadata classes, torch.Size and
                               dtypes), then the structure is checked: each storage entry is a
                               `__<rank>_<n>.distcp` file of this folder, inside that file, and at least
                               as long as the tensor chunk it claims to hold (so memory for a tensor is
                               backed by bytes on disk), no stream transforms (compression).
    load_common(folder)        torch.load(weights_only=True) + plain_data()
    load_object(data, where)   same, for an object stored inside a .distcp file
    SafeFileSystemReader       torch's FileSystemReader using the three above, for DCP and megatron.
Plain data: dict, list, tuple, str, bytes, int, float, bool, None, CPU tensors (and io.BytesIO, which
Transformer Engine uses for its extra state). Our own checkpoints hold nothing else (checkpoint/
sharded.py stores the RNG streams as tensors and ints). Any refusal is a CheckpointError whose str()
is one line naming the file.

NOTE: imports torch only (no megatron-core): conversion and evaluation read checkpoints without it.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import zipfile
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint import planner as dcp_planner

from genlip_megatron.checkpoint.run_dir import DIST_METADATA_FILE, CheckpointError

BACKEND_FILE = DIST_METADATA_FILE  # {"sharded_backend": "torch_dist", ...}
BACKEND = "torch_dist"
METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"
DATA_FILE = re.compile(r"^__\d+_\d+\.distcp$")
# Generous caps, far above what any real checkpoint of this project writes (a 1,024-rank run's
# .metadata is tens of MB; common.pt holds counters and a config), so that a crafted file cannot make
# a reader allocate without bound before anything is checked. Pickle parsing costs at most a few
# dozen bytes of memory per byte of input.
MAX_METADATA_BYTES = 512 * 2**20
MAX_COMMON_BYTES = 256 * 2**20
MAX_BACKEND_BYTES = 2**20  # metadata.json: a few hundred bytes in practice
MAX_DEPTH = 64  # nesting of plain data (our deepest: config -> section -> list)


# (module, name) -> the object the unpickler may hand out; nothing else can be named by a pickle.
_METADATA_GLOBALS: dict[tuple[str, str], Any] = {
    **{("torch.distributed.checkpoint.metadata", n): getattr(dcp_metadata, n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): dcp_filesystem._StorageInfo,
    # Metadata.all_local_plans: every rank's save plan, kept by torch for cached re-saves.
    **{("torch.distributed.checkpoint.planner", n): getattr(dcp_planner, n) for n in (
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData")},
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # "torch.strided" -> layout
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _METADATA_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which checkpoint metadata never "
                                         "holds (a crafted file?)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("holds a persistent reference, which checkpoint metadata never has")


def _file_size(path: str, limit: int) -> int:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size > limit:
        raise CheckpointError(f"{path}: {size} bytes, more than the {limit} this file may have")
    return size


def check_backend(folder: str) -> None:
    """CheckpointError unless `folder` is a torch_dist checkpoint (megatron-core itself does not check)."""
    path = os.path.join(folder, BACKEND_FILE)
    try:
        if os.path.getsize(path) > MAX_BACKEND_BYTES:
            raise ValueError("too large")
        with open(path, encoding="utf-8") as f:
            backend = json.load(f).get("sharded_backend")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a megatron distributed checkpoint)") from None
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__})") from None
    if backend != BACKEND:
        raise CheckpointError(f"{path}: sharded backend {backend!r}; only {BACKEND} is read")


# ---- plain data (common.pt and stored objects) ---------------------------------------------------
def plain_data(value: Any, where: str, depth: int = 0) -> Any:
    """`value` if it is plain data (see the module docstring), else CheckpointError naming `where`."""
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bytes, bool, int, float, io.BytesIO)):
        return value
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter) or value.device.type != "cpu":
            raise CheckpointError(f"{where}: holds a {type(value).__name__} on {value.device}, not a CPU tensor")
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where}: a dict key of type {type(key).__name__}")
            plain_data(item, where, depth + 1)
        return value
    if type(value) in (list, tuple):
        for item in value:
            plain_data(item, where, depth + 1)
        return value
    raise CheckpointError(f"{where}: holds a {type(value).__module__}.{type(value).__qualname__}, "
                          "which is not plain data")


def _check_torch_zip(stream: io.BufferedIOBase | io.BytesIO, where: str, limit: int) -> None:
    """torch.save's format is an uncompressed zip; refuse compressed members (a small file that
    inflates without bound) and members larger than `limit` in total."""
    try:
        with zipfile.ZipFile(stream) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{where}: not a torch.save file ({exc})") from None
    finally:
        stream.seek(0)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members):
        raise CheckpointError(f"{where}: holds compressed members, which torch.save never writes")
    total = sum(m.file_size for m in members)
    if total > limit:
        raise CheckpointError(f"{where}: its members hold {total} bytes, more than the {limit} allowed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # torch's weights_only refusal leads with advice to load with weights_only=False; keep the reason.
    match = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use .*)?$", text, re.M)
    if match:
        text = match.group(1)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _torch_load_plain(stream, where: str, limit: int) -> Any:
    _check_torch_zip(stream, where, limit)
    try:
        value = torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{where}: refused to unpickle: {_first_line(exc)}") from None
    except (RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{where}: unreadable ({type(exc).__name__}: {_first_line(exc)})") from None
    return plain_data(value, where)


def load_common(folder: str) -> dict:
    """The checkpoint's common.pt (plain data), or CheckpointError naming it."""
    path = os.path.join(folder, COMMON_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing (not a complete checkpoint)")
    size = _file_size(path, MAX_COMMON_BYTES)
    with open(path, "rb") as f:
        common = _torch_load_plain(f, path, max(size, 1))
    if not isinstance(common, dict):
        raise CheckpointError(f"{path}: holds a {type(common).__name__}, not a dict")
    return common


def load_object(data: io.BytesIO, where: str) -> Any:
    """An object stored inside a .distcp file (torch.save bytes) as plain data."""
    return _torch_load_plain(data, where, max(len(data.getbuffer()), 1))


# ---- .metadata -----------------------------------------------------------------------------------
def _check_size(value, what: str, where: str) -> None:
    if type(value) is not torch.Size or any(type(d) is not int or d < 0 for d in value):
        raise CheckpointError(f"{where}: {what} is not a shape")


def _check_metadata(md, folder: str) -> None:
    """Structure and bounds of unpickled metadata; every problem names `folder`/.metadata."""
    where = os.path.join(folder, METADATA_FILE)
    if type(md) is not dcp_metadata.Metadata or type(md.state_dict_metadata) is not dict \
            or type(md.storage_data) is not dict:
        raise CheckpointError(f"{where}: not torch.distributed.checkpoint metadata")
    sizes: dict[str, int] = {}
    for index, info in md.storage_data.items():
        if type(index) is not dcp_metadata.MetadataIndex or type(info) is not dcp_filesystem._StorageInfo:
            raise CheckpointError(f"{where}: a storage entry of an unexpected type")
        name = info.relative_path
        if type(name) is not str or not DATA_FILE.match(name):
            raise CheckpointError(f"{where}: storage file {name!r} is not a __<rank>_<n>.distcp file "
                                  "of this folder")
        if info.transform_descriptors:
            raise CheckpointError(f"{where}: storage transforms {list(info.transform_descriptors)!r} "
                                  "(compressed data) are not read")
        if name not in sizes:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: missing shard file (listed in {METADATA_FILE})")
            sizes[name] = os.path.getsize(path)
        if type(info.offset) is not int or type(info.length) is not int or info.offset < 0 \
                or info.length < 0 or info.offset + info.length > sizes[name]:
            raise CheckpointError(f"{where}: entry {index.fqn!r} lies outside {name} "
                                  f"(offset {info.offset}, length {info.length}, file {sizes[name]} bytes)")
    for key, item in md.state_dict_metadata.items():
        if type(key) is not str:
            raise CheckpointError(f"{where}: a state key of type {type(key).__name__}")
        if type(item) is dcp_metadata.BytesStorageMetadata:
            continue
        if type(item) is not dcp_metadata.TensorStorageMetadata \
                or type(item.properties) is not dcp_metadata.TensorProperties \
                or not isinstance(item.properties.dtype, torch.dtype) or type(item.chunks) is not list:
            raise CheckpointError(f"{where}: entry {key!r} is not tensor metadata")
        _check_size(item.size, f"the shape of {key!r}", where)
        itemsize = item.properties.dtype.itemsize
        for chunk in item.chunks:
            if type(chunk) is not dcp_metadata.ChunkStorageMetadata:
                raise CheckpointError(f"{where}: entry {key!r} has a chunk of an unexpected type")
            _check_size(chunk.offsets, f"a chunk offset of {key!r}", where)
            _check_size(chunk.sizes, f"a chunk size of {key!r}", where)
            if len(chunk.offsets) != len(item.size) or len(chunk.sizes) != len(item.size) or any(
                    o + s > d for o, s, d in zip(chunk.offsets, chunk.sizes, item.size)):
                raise CheckpointError(f"{where}: a chunk of {key!r} lies outside its shape {tuple(item.size)}")
            info = md.storage_data.get(dcp_metadata.MetadataIndex(key, chunk.offsets))
            if info is None:
                raise CheckpointError(f"{where}: a chunk of {key!r} has no storage entry")
            # A stored chunk is torch.save bytes of the chunk: never shorter than its raw data, so a
            # shape cannot claim more memory than the folder holds on disk.
            if info.length < math.prod(chunk.sizes) * itemsize:
                raise CheckpointError(f"{where}: {key!r} claims a {tuple(chunk.sizes)} chunk but stores "
                                      f"only {info.length} bytes for it")


def read_metadata(folder: str):
    """The folder's torch.distributed.checkpoint Metadata, unpickled through the allow-list and
    checked (module docstring); CheckpointError otherwise."""
    path = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing (not a complete checkpoint)")
    _file_size(path, MAX_METADATA_BYTES)
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to unpickle: {_first_line(exc)}") from None
    except (EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError,
            MemoryError, OverflowError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__})") from None
    _check_metadata(md, folder)
    if getattr(md, "storage_meta", None) is None:
        md.storage_meta = dcp_metadata.StorageMeta()
    return md


class _SafeObjectPlanner:
    """Wraps a LoadPlanner so that stored objects reach it only as re-serialised plain data: torch's
    default planner unpickles object bytes with weights_only=False."""

    def __init__(self, planner, reader: SafeFileSystemReader):
        self._planner, self._reader = planner, reader

    def __getattr__(self, name):
        return getattr(self._planner, name)

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = load_object(value, self._reader.where(read_item.storage_index))
        clean = io.BytesIO()
        torch.save(obj, clean)  # our own bytes of checked plain data: nothing left to execute
        clean.seek(0)
        self._planner.load_bytes(read_item, clean)


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader that reads metadata, objects and tensor chunks through this module.

    The metadata is read once and cached (megatron-core asks for it several times per load).
    """

    def __init__(self, path: str):
        super().__init__(path)
        self.folder = str(path)
        self._metadata = None
        self._reading = self.folder  # the entry being read, for error messages

    def read_metadata(self, *args, **kwargs):
        if self._metadata is None:
            self._metadata = read_metadata(self.folder)
            self._metadata.storage_meta.load_id = self.load_id
        return self._metadata

    def where(self, index) -> str:
        """'<folder>/<file> at offset N (<key>)' for a storage index: what an error names."""
        info = self.read_metadata().storage_data[index]
        return f"{os.path.join(self.folder, info.relative_path)} at offset {info.offset} ({index.fqn})"

    def _slice_file(self, file, sinfo):
        self._reading = f"{os.path.join(self.folder, sinfo.relative_path)} at offset {sinfo.offset}"
        data = io.BytesIO(super()._slice_file(file, sinfo).read(sinfo.length))
        if len(data.getbuffer()) != sinfo.length:
            raise CheckpointError(f"{self._reading}: truncated ({len(data.getbuffer())} of {sinfo.length} bytes)")
        _check_torch_zip(data, self._reading, max(sinfo.length, 1))
        return data

    def read_data(self, plan, planner):
        try:
            return super().read_data(plan, _SafeObjectPlanner(planner, self))
        except CheckpointError:
            raise
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{self._reading}: refused to unpickle: {_first_line(exc)}") from None
        except FileNotFoundError as exc:
            raise CheckpointError(f"{exc.filename}: missing (a shard file of this checkpoint)") from None
        except (RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                AssertionError) as exc:
            raise CheckpointError(f"{self._reading}: unreadable ({type(exc).__name__}: {_first_line(exc)})"
                                  ) from None

    def check_objects(self) -> int:
        """Read every stored object (RNG state, extra state) through load_object; return how many.
        Objects are small; this makes a reader that needs only tensors refuse a crafted folder too."""
        md = self.read_metadata()
        count = 0
        for index, info in md.storage_data.items():
            if type(md.state_dict_metadata.get(index.fqn)) is not dcp_metadata.BytesStorageMetadata:
                continue
            with open(os.path.join(self.folder, info.relative_path), "rb") as f:
                f.seek(info.offset)
                data = io.BytesIO(f.read(info.length))
            load_object(data, self.where(index))
            count += 1
        return count
