"""The official GenLIP initialisation of a megatron-core GenLIP stage, the same at every layout.

The official training code (genlip_modeling.py `_init_weights`, called on the whole model before
training) draws every Linear, the patch Conv2d and the token embedding from N(0, 0.02) with zero
biases, sets LayerNorms to (1, 0), leaves LayerScale at its 0.1, and then re-draws the attention
projections xavier-uniform with their own fans: q_proj [2W, W] (its gate rows included), k_proj,
v_proj and out_proj [W, W]. SwiGLU fc1 / gate_fc / fc2, in_proj, proj and lm_head stay N(0, 0.02).

Megatron-core stores those matrices differently: q, gate, k, v fused into linear_qkv with rows per
head [q_h ; gate_h ; k_h ; v_h], gate_fc and fc1 fused into linear_fc1 as [gate ; up], everything
split across tensor-parallel ranks, layers spread over pipeline stages, and its own initialisation
draws from per-rank RNG streams. So a parameter here is initialised as a whole, by its GLOBAL name
(pipeline stages renumber layers, so the global layer index is used): the full megatron-layout
tensor is drawn from a generator seeded by (seed, global name), each row scaled by the bound of
the official matrix it belongs to, and this rank keeps its tensor-parallel slice. The same seed
therefore gives the same full weights at TP1 and at TP2 x PP2 (tests/model/test_init.py).

NOTE: every rank draws the full tensor of each of its parameters, one at a time; the largest is the
token embedding (151,936 x text_embed_dim fp32, 0.6 GB at 1,024), about a second on a GPU. The
vocabulary rows are drawn for the real vocabulary only (the padded size depends on TP); padding
rows are zero and never receive a label.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
from megatron.core import parallel_state

__all__ = ["initialize_genlip", "init_rule"]

_LAYER = re.compile(r"^(decoder\.layers\.)(\d+)(\..*)$")
_VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")


def init_rule(name: str) -> str:
    """How the official code initialises the parameter called `name` (megatron-core name, local or
    TE spec): ones | zeros | layer_scale | xavier_qkv | xavier_square | normal."""
    if name.endswith(("layernorm.weight", "layer_norm_weight")):
        return "ones"
    if name.endswith(("bias", "layer_norm_bias")):
        return "zeros"
    if name.endswith("lambda1"):
        return "layer_scale"
    if name.endswith("self_attention.linear_qkv.weight"):
        return "xavier_qkv"
    if name.endswith("self_attention.linear_proj.weight"):
        return "xavier_square"
    if name.endswith(("linear_fc1.weight", "linear_fc2.weight", "patch_embedding.weight", "in_proj.weight",
                      "proj.weight") + _VOCAB_ROWS):
        return "normal"
    raise ValueError(f"no initialisation rule for parameter {name!r}")


def _global_name(name: str, model) -> str:
    m = _LAYER.match(name)
    return f"{m[1]}{model.decoder.layers[int(m[2])].layer_number - 1}{m[3]}" if m else name


def _generator(seed: int, global_name: str, device) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}:{global_name}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def _xavier_qkv(shape, width: int, heads: int, gen: torch.Generator, device) -> torch.Tensor:
    """[heads * 4 * head_dim, W]: q and gate rows with q_proj's fans (W in, 2W out), k and v rows
    with [W, W] fans."""
    full = torch.empty(shape, dtype=torch.float32, device=device).uniform_(-1.0, 1.0, generator=gen)
    per_head = full.view(heads, 4, -1, shape[-1])
    per_head[:, :2] *= math.sqrt(6.0 / (width + 2 * width))
    per_head[:, 2:] *= math.sqrt(6.0 / (width + width))
    return full


def _full_tensor(rule: str, shape, model, gen, device) -> torch.Tensor:
    if rule == "xavier_qkv":
        return _xavier_qkv(shape, model.config.hidden_size, model.config.num_attention_heads, gen, device)
    if rule == "xavier_square":
        bound = math.sqrt(6.0 / (shape[0] + shape[1]))
        return torch.empty(shape, dtype=torch.float32, device=device).uniform_(-bound, bound, generator=gen)
    return torch.empty(shape, dtype=torch.float32, device=device).normal_(
        0.0, model.genlip.init_method_std, generator=gen)


def _local_slice(name: str, full: torch.Tensor, param, rank: int, size: int) -> torch.Tensor:
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if ".linear_fc1." in name:  # GLU rows [gate ; up]: each rank holds [its gate slice ; its up slice]
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(size, dim)[rank], up.chunk(size, dim)[rank]], dim)
    return full.chunk(size, dim=dim)[rank]


@torch.no_grad()
def initialize_genlip(model, seed: int) -> None:
    """Overwrite every parameter of GenLIP stage `model` with the official initialisation (see the
    module docstring). Parameters on the meta device are left alone."""
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    for name, param in model.named_parameters():
        if param.device.type == "meta":
            continue
        rule = init_rule(name)
        if rule in ("ones", "zeros", "layer_scale"):
            param.fill_({"ones": 1.0, "zeros": 0.0, "layer_scale": model.genlip.layer_scale_init}[rule])
            continue
        shape = list(param.shape)
        if getattr(param, "tensor_model_parallel", False):
            shape[param.partition_dim] *= size
        device = param.device
        gen = _generator(seed, _global_name(name, model), device)
        if name in _VOCAB_ROWS:  # draw the real rows only: the padded count depends on TP
            full = torch.zeros(shape, dtype=torch.float32, device=device)
            full[: model.genlip.vocab_size] = _full_tensor(rule, [model.genlip.vocab_size] + shape[1:], model,
                                                           gen, device)
        else:
            full = _full_tensor(rule, shape, model, gen, device)
        param.copy_(_local_slice(name, full, param, rank, size))
