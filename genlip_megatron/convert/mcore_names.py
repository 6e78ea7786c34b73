"""The one mapping between the official Hugging Face GenLIP layout and our megatron-core model.

Used by checkpoint conversion and by every parity test, so a naming or layout mistake shows up in
tests before it reaches a user. Works on FULL (unsharded) tensors; `shard_for_model` then cuts the
full megatron-core state into the slices a given TP/PP/VPP rank holds.

Layout facts (megatron-core 0.16, gated attention, MHA):
- linear_qkv rows are grouped per head: [q_h ; gate_h ; k_h ; v_h] for h = 0..heads-1, while HF keeps
  q_proj = [q ; gate] (2 * width rows) and separate k_proj / v_proj.
- linear_fc1 rows are [gate_fc ; fc1] (megatron's GLU applies the activation to the first half), and
  under TP each rank holds [gate slice ; up slice], not a contiguous row block.
- the TE spec fuses pre-norms into the next linear: layer_norm1 -> linear_qkv.layer_norm_{weight,bias},
  layer_norm2 -> linear_fc1.layer_norm_{weight,bias}.
"""

from __future__ import annotations

import re

import torch

_GLOBAL = {  # hf name -> mcore name, tensors copied as they are (vocab rows padded)
    "vision_embeddings.patch_embedding.bias": "embedding.patch_embedding.bias",
    "embeddings.weight": "embedding.word_embeddings.weight",
    "in_proj.weight": "embedding.in_proj.weight",
    "in_proj.bias": "embedding.in_proj.bias",
    "ln_post.weight": "decoder.final_layernorm.weight",
    "ln_post.bias": "decoder.final_layernorm.bias",
    "proj.weight": "proj.weight",
    "proj.bias": "proj.bias",
    "lm_head.weight": "output_layer.weight",
}
_VOCAB_ROWS = {"embeddings.weight", "lm_head.weight"}


def _layer_names(layer_spec: str) -> dict[str, str]:
    norm1 = "self_attention.linear_qkv.layer_norm_" if layer_spec == "te" else "input_layernorm."
    norm2 = "mlp.linear_fc1.layer_norm_" if layer_spec == "te" else "pre_mlp_layernorm."
    return {
        "layer_norm1.weight": norm1 + "weight", "layer_norm1.bias": norm1 + "bias",
        "layer_norm2.weight": norm2 + "weight", "layer_norm2.bias": norm2 + "bias",
        "self_attn.out_proj.weight": "self_attention.linear_proj.weight",
        "self_attn.out_proj.bias": "self_attention.linear_proj.bias",
        "mlp.fc2.weight": "mlp.linear_fc2.weight", "mlp.fc2.bias": "mlp.linear_fc2.bias",
        "layer_scale1.lambda1": "layer_scale1.lambda1",
        "layer_scale2.lambda1": "layer_scale2.lambda1",
    }


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def hf_to_mcore(hf: dict, *, num_layers: int, num_heads: int, padded_vocab: int,
                layer_spec: str = "local") -> dict[str, torch.Tensor]:
    """Full HF GenLIP state dict -> full megatron-core state dict (global layer numbering)."""
    out = {}
    w = hf["vision_embeddings.patch_embedding.weight"]
    out["embedding.patch_embedding.weight"] = w.reshape(w.shape[0], -1)
    for src, dst in _GLOBAL.items():
        if src in hf:
            out[dst] = _pad_rows(hf[src], padded_vocab) if src in _VOCAB_ROWS else hf[src]
    names = _layer_names(layer_spec)
    for i in range(num_layers):
        src, dst = f"visual.layers.{i}.", f"decoder.layers.{i}."
        for a, b in names.items():
            out[dst + b] = hf[src + a]
        for kind in ("weight", "bias"):
            q, gate = hf[f"{src}self_attn.q_proj.{kind}"].chunk(2, dim=0)
            k, v = hf[f"{src}self_attn.k_proj.{kind}"], hf[f"{src}self_attn.v_proj.{kind}"]
            per_head = [t.reshape(num_heads, -1, *t.shape[1:]) for t in (q, gate, k, v)]
            out[f"{dst}self_attention.linear_qkv.{kind}"] = torch.cat(per_head, dim=1).reshape(
                -1, *q.shape[1:])
            out[f"{dst}mlp.linear_fc1.{kind}"] = torch.cat(
                [hf[f"{src}mlp.gate_fc.{kind}"], hf[f"{src}mlp.fc1.{kind}"]])
    return out


def mcore_to_hf(mc: dict, *, num_layers: int, num_heads: int, vocab_size: int,
                patch_size: int, num_channels: int = 3, layer_spec: str = "local") -> dict:
    """Full megatron-core state dict -> HF GenLIP state dict (vocab padding removed)."""
    out = {}
    for group in iter_mcore_to_hf(mc, num_layers=num_layers, num_heads=num_heads, vocab_size=vocab_size,
                                  patch_size=patch_size, num_channels=num_channels, layer_spec=layer_spec):
        out.update(group)
    return out


def iter_mcore_to_hf(mc, *, num_layers: int, num_heads: int, vocab_size: int,
                     patch_size: int, num_channels: int = 3, layer_spec: str = "local"):
    """`mcore_to_hf` as small dicts, each built from ONE megatron-core tensor.

    NOTE: `mc` may be a lazy Mapping that reads a tensor from disk on every access (conversion of
    big checkpoints): each source is then read once and only it and its outputs are alive at a time.
    """
    w = mc["embedding.patch_embedding.weight"]
    yield {"vision_embeddings.patch_embedding.weight": w.reshape(
        w.shape[0], num_channels, patch_size, patch_size)}
    del w  # a generator keeps its locals alive: drop each source once its group is consumed
    for src, dst in _GLOBAL.items():
        if dst in mc:
            yield {src: mc[dst][:vocab_size] if src in _VOCAB_ROWS else mc[dst]}
    names = _layer_names(layer_spec)
    for i in range(num_layers):
        hf, m = f"visual.layers.{i}.", f"decoder.layers.{i}."
        for a, b in names.items():
            yield {hf + a: mc[m + b]}
        for kind in ("weight", "bias"):
            qkv = mc[f"{m}self_attention.linear_qkv.{kind}"]
            q, gate, k, v = qkv.reshape(num_heads, 4, -1, *qkv.shape[1:]).unbind(1)
            flat = [t.reshape(-1, *qkv.shape[1:]) for t in (q, gate, k, v)]
            yield {f"{hf}self_attn.q_proj.{kind}": torch.cat(flat[:2]),
                   f"{hf}self_attn.k_proj.{kind}": flat[2], f"{hf}self_attn.v_proj.{kind}": flat[3]}
            del qkv, q, gate, k, v, flat
            gate_fc, fc1 = mc[f"{m}mlp.linear_fc1.{kind}"].chunk(2)
            yield {f"{hf}mlp.gate_fc.{kind}": gate_fc, f"{hf}mlp.fc1.{kind}": fc1}


_LAYER_KEY = re.compile(r"^(.*decoder\.layers\.)(\d+)(\..*)$")


def _tp_slice(name: str, full: torch.Tensor, param, tp_rank: int, tp_size: int) -> torch.Tensor:
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if _is_glu_rows(name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp_size, dim)[tp_rank], up.chunk(tp_size, dim)[tp_rank]], dim)
    return full.chunk(tp_size, dim=dim)[tp_rank].contiguous()


def shard_for_model(full: dict, model: torch.nn.Module, tp_rank: int, tp_size: int) -> dict:
    """Cut a full megatron-core state dict into `model`'s local slices (its pipeline stage and TP
    rank). Local layer i of the stage is global layer `layers[i].layer_number - 1`."""
    params = dict(model.named_parameters())
    return {name: _tp_slice(name, full[global_name(name, model)], params.get(name), tp_rank, tp_size)
            for name in model.state_dict() if not name.endswith("_extra_state")}


def _is_glu_rows(name: str) -> bool:
    return ".linear_fc1." in name and "layer_norm" not in name


def gather_tp_slices(name: str, local: torch.Tensor, param, group) -> torch.Tensor:
    """Inverse of the TP cut: all-gather a tensor-parallel slice back to the full tensor."""
    import torch.distributed as dist

    size = dist.get_world_size(group)
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    dim = param.partition_dim
    if _is_glu_rows(name):
        halves = [p.chunk(2, dim=dim) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
    return torch.cat(parts, dim=dim)


def global_name(name: str, model: torch.nn.Module) -> str:
    """`decoder.layers.<local>.…` of a pipeline stage -> the name with the global layer index."""
    m = _LAYER_KEY.match(name)
    if not m:
        return name
    return f"{m[1]}{model.decoder.layers[int(m[2])].layer_number - 1}{m[3]}"
