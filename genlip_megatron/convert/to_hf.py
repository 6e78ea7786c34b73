"""megatron-core distributed checkpoint (any TP/PP/VPP layout, fp32/bf16) -> Hugging Face GenLIP folder
(the GenLIP spec's `hf` export; `export_to_hf` lets the checkpoint's objective choose, convert/dispatch.py).

Streams: the checkpoint is read one megatron-core tensor at a time (checkpoint/reader.py), mapped with
`convert.mcore_names.iter_mcore_to_hf` (the same table the parity tests use) and written straight into
safetensors shards (safetensors_stream.py). Peak memory ~ 2 x the largest tensor + the interpreter,
whatever the model size. No process group, no GPU, no megatron-core import.

The folder (hf_folder.py adds everything but the weights):
    config.json (GenLIP's model_type, auto_map), model.safetensors or model-*-of-*.safetensors + index,
    configuration_genlip.py / modeling_genlip.py / ... (trust_remote_code), tokenizer files,
    preprocessor_config.json, README.md (model card).
"""

from __future__ import annotations

import json
import math
import os

import torch

from genlip_megatron.checkpoint.reader import CheckpointReader, ConversionError
from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.convert.hf_config import genlip_hf_config
from genlip_megatron.convert.mcore_names import iter_mcore_to_hf
from genlip_megatron.convert.output_folder import staged_output
from genlip_megatron.convert.safetensors_stream import ShardedSafetensorsWriter
from genlip_megatron.hf.configuration_genlip import GenLIPConfig


def hf_config(cfg) -> GenLIPConfig:
    """The HF config of the GenLIP the run's model section describes (official keys, auto_map), with
    the prompt and end text captioning puts around a caption (eval/model_defaults.py reads them)."""
    config = genlip_hf_config(cfg.model)
    config.caption_prompt = cfg.data.prompt
    config.caption_end_text = cfg.data.end_text
    config.architectures = ["GenLIPModel"]
    config.auto_map = {"AutoConfig": "configuration_genlip.GenLIPConfig",
                       "AutoModel": "modeling_genlip.GenLIPModel"}
    return config


def _expected_shapes(cfg, padded_vocab: int) -> dict[str, tuple]:
    """Global megatron-core shapes the config implies (per-layer names): to refuse a checkpoint of
    another model, or one whose config does not match its tensors."""
    m = cfg.model
    w, f, text = m.hidden_size, m.ffn_hidden_size, m.text_embed_dim or m.hidden_size
    shapes = {"embedding.patch_embedding.weight": (w, m.num_channels * m.patch_size ** 2),
              "embedding.word_embeddings.weight": (padded_vocab, text),
              "output_layer.weight": (padded_vocab, text), "decoder.final_layernorm.weight": (w,)}
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        shapes[p + "self_attention.linear_qkv.weight"] = (4 * w, w)
        shapes[p + "self_attention.linear_proj.weight"] = (w, w)
        shapes[p + "mlp.linear_fc1.weight"] = (2 * f, w)
        shapes[p + "mlp.linear_fc2.weight"] = (w, f)
    return shapes


def check_matches(reader: CheckpointReader, cfg) -> None:
    """Refuse (one line) when the tensors are not those of the model the config describes."""
    if "embedding.patch_embedding.weight" not in reader and "decoder.final_layernorm.weight" not in reader:
        raise ConversionError(f"{reader.folder}: not a GenLIP checkpoint (no patch embedding, no ln_post)")
    tp = int(reader.common.get("layout", {}).get("tp", cfg.parallel.tensor_model_parallel_size))
    padded = padded_vocab_size(cfg.model, tp)
    stored_layers = {n.split(".")[2] for n in reader if n.startswith("decoder.layers.")}
    if len(stored_layers) != cfg.model.num_layers:
        raise ConversionError(f"{reader.folder}: {len(stored_layers)} layers stored, config says "
                              f"{cfg.model.num_layers}")
    for name, shape in _expected_shapes(cfg, padded).items():
        if name not in reader:
            raise ConversionError(f"{reader.folder}: tensor {name} missing (not a GenLIP checkpoint of this config, "
                                  f"or layer_spec {cfg.model.layer_spec!r} is wrong)")
        if name.endswith("word_embeddings.weight") or name.startswith("output_layer"):
            shape = (reader.shape(name)[0],) + shape[1:]  # padding depends on the saving TP
            if reader.shape(name)[0] < cfg.model.vocab_size:
                raise ConversionError(f"{name}: {reader.shape(name)[0]} rows < vocab_size {cfg.model.vocab_size}")
        if tuple(reader.shape(name)) != shape:
            raise ConversionError(f"{name}: stored shape {tuple(reader.shape(name))} != {shape} from the config")


def hf_tensors(mc, cfg):
    """Generator of small {HF name: tensor} groups from a (lazy) megatron-core mapping."""
    m = cfg.model
    return iter_mcore_to_hf(mc, num_layers=m.num_layers, num_heads=m.num_attention_heads,
                            vocab_size=m.vocab_size, patch_size=m.patch_size,
                            num_channels=m.num_channels, layer_spec=m.layer_spec)


def write_weights(reader: CheckpointReader, cfg, folder: str, dtype: torch.dtype | None,
                  max_shard_bytes: int) -> dict:
    """Stream the weights into safetensors shards. Returns {"files", "tensors", "bytes", "dtype"}."""
    # Planning pass on meta tensors: every output name, shape and dtype, in arrival order, for free.
    plan = [(name, tuple(t.shape), dtype or t.dtype)
            for group in hf_tensors(reader.meta(), cfg) for name, t in group.items()]
    writer = ShardedSafetensorsWriter(folder, plan, max_shard_bytes)
    for group in hf_tensors(reader, cfg):
        for name, tensor in group.items():
            writer.write(name, tensor if dtype is None else tensor.to(dtype))
        del group, tensor
    writer.close()
    return {"files": writer.files, "tensors": len(plan), "dtype": str(plan[0][2]).replace("torch.", ""),
            "bytes": sum(math.prod(s) * d.itemsize for _, s, d in plan),
            "parameters": sum(math.prod(s) for _, s, _ in plan)}


def is_hf_export(folder: str) -> bool:
    """A folder an earlier `convert to-hf` wrote (config.json of model_type genlip)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == GenLIPConfig.model_type
    except (OSError, ValueError, AttributeError):
        return False


def export_tokenizer(cfg, tokenizer: str | None, without_tokenizer: bool) -> str | None:
    """The tokenizer.json an export carries: `tokenizer` (tokenizer.json, HF tokenizer folder or
    dataset), else the run's training dataset's. Refused when there is none, unless the caller asked
    for a folder without one: an exported model without its tokenizer cannot caption."""
    from genlip_megatron.data.dataset_ref import DatasetRefError, run_tokenizer, tokenizer_file
    from genlip_megatron.data.tokenizer import Tokenizer

    if without_tokenizer:
        return None
    try:
        path = tokenizer_file(tokenizer) if tokenizer else None
    except DatasetRefError as exc:
        raise ConversionError(str(exc)) from None
    why = ""
    if path is None:
        path, why = run_tokenizer(cfg)
    if path is None:
        raise ConversionError(f"no tokenizer to export with the model: {why}; pass --tokenizer (a tokenizer.json, "
                              "a Hugging Face tokenizer folder or the training dataset's folder), or "
                              "--without-tokenizer for the weights alone")
    try:
        vocab = Tokenizer.from_file(path).vocab_size
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    if vocab > cfg.model.vocab_size:
        raise ConversionError(f"{path}: {vocab} tokens, but the model's vocabulary is {cfg.model.vocab_size}: "
                              "not the tokenizer this model was trained with")
    return path


def write_hf_folder(reader: CheckpointReader, cfg, out: str, *, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = 2 * 1024 ** 3, tokenizer: str | None = None,
                    eval_json: list[str] = (), without_tokenizer: bool = False) -> dict:
    """GenLIP's Hugging Face export of a checked checkpoint (convert/dispatch.py); returns a summary.

    tokenizer: see `export_tokenizer`; without_tokenizer=True writes the model alone, on purpose."""
    from genlip_megatron.convert import hf_folder

    config = hf_config(cfg)
    tokenizer_path = export_tokenizer(cfg, tokenizer, without_tokenizer)
    with staged_output(out, is_previous=is_hf_export) as stage:
        weights = write_weights(reader, cfg, stage, dtype, max_shard_bytes)
        config.dtype = weights["dtype"]
        config.to_json_file(os.path.join(stage, "config.json"))
        hf_folder.copy_modeling_code(stage)
        tokenizer_file = hf_folder.write_tokenizer(stage, tokenizer_path, cfg.data.end_text) if tokenizer_path else None
        hf_folder.write_image_processor(stage, cfg)
        card = hf_folder.write_model_card(stage, reader, cfg, config, weights, eval_json)
        hf_folder.make_world_readable(stage)
    card = os.path.join(out, os.path.basename(card))
    return {"folder": out, "checkpoint": reader.folder, "iteration": reader.common.get("iteration"),
            "tokenizer": tokenizer_file, "model_card": card, **weights}


def export_to_hf(checkpoint: str, out: str, **options) -> dict:
    """`genlip convert to-hf`: the Hugging Face export of `checkpoint` (run dir or iter folder) that
    its objective writes (GenLIP: write_hf_folder above; options dtype, max_shard_bytes, tokenizer,
    eval_json)."""
    from genlip_megatron.convert.dispatch import export_checkpoint

    return export_checkpoint("hf", checkpoint, out, **options)
