"""AIMv2 checkpoints for `genlip convert`: the check that the stored tensors are those the config
describes, and the Hugging Face export of the encoder as transformers' `Aimv2VisionModel`
(convert/aimv2_names.py maps the names). The encoder is read into memory (it is the smaller part);
the decoder and the heads, which have no Hugging Face counterpart, are not exported."""

from __future__ import annotations

import json
import math
import os

import torch

from genlip_megatron.checkpoint.reader import ConversionError
from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.convert.aimv2_names import (
    ENCODER_PREFIXES,
    export_vision_model,
    reference_config,
    reference_to_mcore,
)
from genlip_megatron.convert.output_folder import staged_output
from genlip_megatron.hf.aimv2_reference import AIMv2Reference

_VOCAB_ROWS = ("word_embeddings.weight", "output_layer.weight")


def expected_shapes(cfg, padded_vocab: int) -> dict[str, tuple]:
    """Global megatron-core shapes (per-layer names) of the AIMv2 the config describes."""
    m = cfg.model
    with torch.device("meta"):
        reference = AIMv2Reference(reference_config(m))
    mc = reference_to_mcore(reference.state_dict(), num_layers=m.num_layers, num_heads=m.num_attention_heads,
                            decoder_num_layers=m.decoder_num_layers, decoder_num_heads=m.decoder_num_attention_heads,
                            padded_vocab=padded_vocab, layer_spec=m.layer_spec)
    return {name: tuple(t.shape) for name, t in mc.items()}


def check_checkpoint(reader, cfg) -> None:
    """Refuse (one line) when the stored tensors are not those of the AIMv2 the config describes."""
    tp = int(reader.common.get("layout", {}).get("tp", cfg.parallel.tensor_model_parallel_size))
    for name, shape in expected_shapes(cfg, padded_vocab_size(cfg.model, tp)).items():
        if name not in reader:
            raise ConversionError(f"{reader.folder}: tensor {name} missing: not a checkpoint of objective "
                                  f"{cfg.model.objective!r} as its config describes (or model.layer_spec "
                                  f"{cfg.model.layer_spec!r} is wrong)")
        stored = tuple(reader.shape(name))
        if name in _VOCAB_ROWS:  # vocabulary padding depends on the saving TP
            if stored[0] < cfg.model.vocab_size:
                raise ConversionError(f"{name}: {stored[0]} rows < vocab_size {cfg.model.vocab_size}")
            shape = (stored[0],) + shape[1:]
        if stored != shape:
            raise ConversionError(f"{name}: stored shape {stored} != {shape} from the config")


def _is_previous(folder: str) -> bool:
    """A folder an earlier AIMv2 export wrote (config.json of transformers' Aimv2VisionModel)."""
    from transformers import Aimv2VisionConfig

    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == Aimv2VisionConfig.model_type
    except (OSError, ValueError, AttributeError):
        return False


def write_vision_folder(reader, cfg, out: str, *, dtype: torch.dtype | None = None,
                        max_shard_bytes: int = 2 * 1024 ** 3, **_unused) -> dict:
    """The encoder as an `Aimv2VisionModel` folder (config.json + safetensors); loads with
    `transformers.Aimv2VisionModel.from_pretrained(out)`. Tokenizer and model-card options of
    GenLIP's export do not apply (the encoder reads no text)."""
    encoder = {n: reader.load(n) for n in reader if n.startswith(ENCODER_PREFIXES)}
    with staged_output(out, is_previous=_is_previous) as stage:
        model = export_vision_model(encoder, cfg.model, stage, layer_spec=cfg.model.layer_spec, dtype=dtype,
                                    max_shard_size=max_shard_bytes)
    state = model.state_dict()
    return {"folder": out, "checkpoint": reader.folder, "iteration": reader.common.get("iteration"),
            "model": "Aimv2VisionModel", "tensors": len(state),
            "dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
            "parameters": sum(math.prod(t.shape) for t in state.values())}
