"""Model FLOPs of a GenLIP training step (the GenLIP spec's formula; training/mfu.py turns FLOPs into MFU).

The count is exact for the packed batch at hand (it reads the batch's sample spans), so packing
efficiency and the prefix-LM mask's sparsity are accounted for, not averaged away. A matmul of
[m, k] x [k, n] counts 2*m*k*n FLOPs. Per FORWARD pass, with H = width, F = SwiGLU hidden,
E = text_embed_dim, V = padded vocabulary, L = layers, P = patch size, C = channels:

    patch embed     2 * N_img * (C*P*P) * H
    in_proj         2 * N_txt * E * H                 (only when E != H)
    per layer       2 * T * (4*H*H)                   q, gate, k, v projections (gate: GenLIP's
                                                      attention output gate, H extra rows of q)
                  + 2 * T * (H*H)                     output projection
                  + 2 * T * (3*H*F)                   SwiGLU: fc1, gate_fc, fc2
                  + 4 * H * pairs                     scores QK^T and probabilities x V
    proj            2 * N_loss * H * E                (only when E != H)
    lm_head         2 * N_loss * E * V

T = real (non-padding) tokens, N_img / N_txt their image / text share, N_loss the positions that
carry loss (caption and end tokens): training runs proj, the head and its cross-entropy on those
alone (model/lm_head.py). `pairs` = query-key pairs the
prefix-LM mask allows, per sample: n_img^2 (image->image) + n_txt*n_img (text->image) +
n_txt*(n_txt+1)/2 (text->earlier text and itself). Padding is not counted: it is wasted work, not
model work. A step is 3x the forward (backward = 2x forward); recompute is not counted (model FLOPs,
not hardware FLOPs). Element-wise work (norms, rotary, softmax, sigmoid gate, residuals) is ignored;
so are the few rows sequence parallelism pads the head's input with (wasted work, not model work).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    """The sizes the formula needs (see the module docstring for the symbols)."""

    hidden: int
    ffn_hidden: int
    layers: int
    text_embed_dim: int
    padded_vocab: int
    patch_dim: int  # C * P * P

    @classmethod
    def from_config(cls, model_cfg, padded_vocab: int) -> ModelShape:
        return cls(hidden=model_cfg.hidden_size, ffn_hidden=model_cfg.ffn_hidden_size,
                   layers=model_cfg.num_layers,
                   text_embed_dim=model_cfg.text_embed_dim or model_cfg.hidden_size,
                   padded_vocab=padded_vocab,
                   patch_dim=model_cfg.num_channels * model_cfg.patch_size ** 2)


@dataclass(frozen=True)
class TokenCounts:
    """Per-batch counts the FLOPs formula needs."""

    image_tokens: int
    text_tokens: int
    attention_pairs: int
    samples: int
    loss_tokens: int  # positions that carry loss: the rows proj and the lm_head run on

    @property
    def tokens(self) -> int:
        return self.image_tokens + self.text_tokens


def count_tokens(spans: torch.Tensor, loss_mask: torch.Tensor) -> TokenCounts:
    """Counts of a packed micro-batch from its sample spans int64 [K, 3] = (start, text start, end)
    per sample (PackedBatch.spans; padding belongs to no span) and its loss_mask [B, S]."""
    start, text_start, end = spans.long().unbind(1)
    n_img, n_txt = text_start - start, end - text_start
    pairs = n_img * n_img + n_txt * n_img + n_txt * (n_txt + 1) // 2
    return TokenCounts(image_tokens=int(n_img.sum()), text_tokens=int(n_txt.sum()),
                       attention_pairs=int(pairs.sum()), samples=int(spans.shape[0]),
                       loss_tokens=int((loss_mask != 0).sum()))


def forward_flops(shape: ModelShape, counts: TokenCounts) -> int:
    """FLOPs of one forward pass over a batch with these counts (formula in the module docstring)."""
    h, f, e, t = shape.hidden, shape.ffn_hidden, shape.text_embed_dim, counts.tokens
    flops = 2 * counts.image_tokens * shape.patch_dim * h
    if e != h:
        flops += 2 * counts.text_tokens * e * h + 2 * counts.loss_tokens * h * e  # in_proj, proj
    per_layer = 2 * t * (4 * h * h) + 2 * t * h * h + 2 * t * 3 * h * f + 4 * h * counts.attention_pairs
    flops += shape.layers * per_layer
    flops += 2 * counts.loss_tokens * e * shape.padded_vocab
    return flops


def train_step_flops(shape: ModelShape, counts: TokenCounts) -> int:
    """Forward + backward (backward = 2 x forward)."""
    return 3 * forward_flops(shape, counts)
