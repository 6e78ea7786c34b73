"""Read a Hugging Face GenLIP folder: config.json, the safetensors index and the weight files.

Every problem is a one-line ConversionError naming the file: a missing, oversized, non-JSON or
non-GenLIP config.json; an index whose shard names leave the folder; pickled weights only (loading
them runs code, so they are refused, never read); a safetensors file that is truncated, has an
oversized or garbled header, or offsets outside its data (the safetensors library checks the header
against the file size when it opens it, so a file cannot claim more memory than it holds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open

from genlip_megatron.checkpoint.reader import ConversionError
from genlip_megatron.hf.configuration_genlip import GenLIPConfig

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_JSON_BYTES = {CONFIG_FILE: 1 << 20, INDEX_FILE: 64 << 20}


def read_json_object(path: str) -> dict:
    """A config.json or safetensors index, bounded in size and depth; one ConversionError line."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES[name]:
            raise ConversionError(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES[name]} a {name} may have")
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = str(exc).splitlines()[0] if not isinstance(exc, RecursionError) else "nested too deeply"
        raise ConversionError(f"{path}: not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_hf_config(folder: str) -> GenLIPConfig:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConversionError(f"{folder}: no {CONFIG_FILE} (not a Hugging Face model folder)")
    raw = read_json_object(path)
    if raw.get("model_type") != GenLIPConfig.model_type:
        raise ConversionError(f"{path}: model_type {str(raw.get('model_type'))[:40]!r}, "
                              f"expected {GenLIPConfig.model_type!r}")
    try:
        return GenLIPConfig.from_dict(raw)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise ConversionError(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def weight_files(folder: str) -> list[str]:
    """The safetensors files (index or single file). Pickled weights are refused: loading them runs code."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"{index}: no weight_map of tensor names to file names")
        files = sorted(set(weight_map.values()))
        outside = [f for f in files if os.path.basename(f) != f or not f.endswith(".safetensors")]
        if outside:
            raise ConversionError(f"{index}: names {outside[0]!r}, not a .safetensors file of this folder")
    elif os.path.isfile(os.path.join(folder, SINGLE_FILE)):
        files = [SINGLE_FILE]
    else:
        pickled = [n for n in os.listdir(folder) if n.endswith(PICKLE_SUFFIXES)]
        raise ConversionError(f"{folder}: no safetensors weights" + (
            f" (found pickled {pickled}: convert them to safetensors first)" if pickled else ""))
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ConversionError(f"{folder}: missing weight shards {missing}")
    return files


def iter_tensors(folder: str, keep: Callable[[str], bool] = lambda name: True
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight file, one tensor at a time; ConversionError names a bad file."""
    for name in weight_files(folder):
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if keep(key):
                        yield key, f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConversionError(f"{path}: not a readable safetensors file ({reason})") from None


def check_hf_folder(folder: str) -> GenLIPConfig:
    """config.json and every weight file's header, read the way iter_tensors would (no tensor data)."""
    config = read_hf_config(folder)
    for name in weight_files(folder):
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConversionError(f"{path}: not a readable safetensors file ({reason})") from None
    return config
