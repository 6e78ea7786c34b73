"""The GenLIP transformer block in plain torch: gated attention with MRoPE, SwiGLU MLP, LayerScale, DropPath.

GenLIP: "Let ViT Speak" (arXiv 2605.00809). Pre-norm block:
    x = x + DropPath(LayerScale1(Attn(LN1(x))))
    x = x + DropPath(LayerScale2(MLP(LN2(x))))
Attention: q_proj emits 2*width rows [q ; gate]; out = SDPA(q, k, v) * sigmoid(gate) (per head and channel),
then out_proj. All projections carry a bias; no QK-norm. MLP: fc2(silu(gate_fc(x)) * fc1(x)).
Submodule names give the official state-dict keys (`self_attn.q_proj`, `mlp.gate_fc`, `layer_scale1.lambda1`).
With a transformers `Cache`, each attention appends its rotated keys and its values
to the cache under its layer index and attends over everything cached so far (see kv_cache.py).

Differences from the reference, by design:
- attention always goes through torch SDPA with a boolean [B, 1, S, S] mask (the official "eager" path
  ignores boolean masks and its "sdpa" path broadcasts correctly only for batch size 1).
- DropPath: config.drop_path_schedule "linear" (not in the official code) ramps the rate from 0 at
  the first block to drop_path_rate at the last; the default "constant" is the official rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rotary


class LayerScale(nn.Module):
    """Per-channel scale; parameter name `lambda1` as in the official weights."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.lambda1 = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a batch element (a packed sequence) in training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class GenLIPAttention(nn.Module):
    """Gated multi-head self-attention with interleaved MRoPE."""

    def __init__(self, width: int, num_heads: int, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # where this layer's keys and values live in a KV cache
        self.width = width
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.q_proj = nn.Linear(width, 2 * width)  # rows [q ; gate]
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            proj.official_xavier_init = True  # read by GenLIPPreTrainedModel._init_weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, width] -> [B, heads, S, head_dim]."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, allowed: torch.Tensor, cache=None) -> torch.Tensor:
        """
        Args:
            x: [B, S, width]; freqs: [B, S, head_dim] rotary angles; allowed: bool [B, 1, S, P + S],
            True = may attend, over the P cached keys (P = 0 without a cache) and then the S new ones.
            cache: a transformers `Cache` or None; the new keys (rotated) and values are appended to it.
        Returns:
            [B, S, width].
        """
        b, s, _ = x.shape
        q, gate = self.q_proj(x).split(self.width, dim=-1)
        q = apply_rotary(self._heads(q), freqs)
        k = apply_rotary(self._heads(self.k_proj(x)), freqs)
        v = self._heads(self.v_proj(x))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, heads, P + S, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, heads, S, head_dim]
        out = out.transpose(1, 2).reshape(b, s, self.width)
        return self.out_proj(out * torch.sigmoid(gate))


class GenLIPMLP(nn.Module):
    """SwiGLU with biases: fc2(silu(gate_fc(x)) * fc1(x))."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.gate_fc = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, width] -> [B, S, width]."""
        return self.fc2(F.silu(self.gate_fc(x)) * self.fc1(x))


class GenLIPLayer(nn.Module):
    """One pre-norm block (see the module docstring)."""

    def __init__(self, config, drop_path_rate: float = 0.0, layer_idx: int = 0):
        super().__init__()
        width = config.hidden_size
        self.layer_norm1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.self_attn = GenLIPAttention(width, config.num_attention_heads, layer_idx)
        self.layer_scale1 = LayerScale(width, config.ls_init_value)
        self.layer_norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = GenLIPMLP(width, config.intermediate_size)
        self.layer_scale2 = LayerScale(width, config.ls_init_value)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, allowed: torch.Tensor, cache=None) -> torch.Tensor:
        """[B, S, width] -> [B, S, width]."""
        x = x + self.drop_path(self.layer_scale1(self.self_attn(self.layer_norm1(x), freqs, allowed, cache)))
        return x + self.drop_path(self.layer_scale2(self.mlp(self.layer_norm2(x))))


class GenLIPEncoder(nn.Module):
    """The trunk: `layers.N` (official prefix `visual.layers.N`)."""

    def __init__(self, config):
        super().__init__()
        depth, rate = config.num_hidden_layers, config.drop_path_rate
        if getattr(config, "drop_path_schedule", "constant") == "linear":
            rates = [rate * i / max(depth - 1, 1) for i in range(depth)]
        else:  # the official rule: the same rate in every block
            rates = [rate] * depth
        self.layers = nn.ModuleList(GenLIPLayer(config, rate, index) for index, rate in enumerate(rates))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, allowed: torch.Tensor, cache=None) -> torch.Tensor:
        """[B, S, width] -> [B, S, width] (after the last block, before ln_post)."""
        for layer in self.layers:
            x = layer(x, freqs, allowed, cache)
        return x
