"""AIMv2 in plain torch: the single-process reference of the megatron-core AIMv2 (no megatron import).

AIMv2: "Multimodal Autoregressive Pre-training of Large Vision Encoders" (arXiv 2411.14402); facts in
docs/sources.md. A prefix-attention ViT encoder (patch conv + RMSNorm, absolute position
embedding, RMSNorm pre-norm blocks without biases, SwiGLU) feeds a causal decoder that reads
[projected image features][caption tokens] and predicts the next patch (pixel head, per-patch
normalised target, MSE on non-prefix patches) and the next token (text head, CE).

The encoder's parameters carry exactly the names of transformers' `Aimv2VisionModel` (use_head=False)
under `vision.`, so exporting is a prefix strip (convert/aimv2_names.py). The mask and target helpers
below are plain torch and are also used by the megatron-core model (as GenLIP shares hf/masks.py).

Batches are docs/batch.md packed batches plus `image_prefix` bool [B, S] (True at image patches of
their sample's prefix; all image patches at evaluation), see model/aimv2_prefix.py.

Differences from the reference, by design:
- the decoder's positions are the batch's MRoPE positions (hf/rope.py), which our sources do not
  specify; image patches (0, row, col), text continuing after the image;
- the image-to-decoder projection, pixel head and text head have no bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rotary, interleaved_mrope_freqs

TARGET_EPS = 1e-6  # per-patch target normalisation: (p - mean) / sqrt(var + eps), as MAE


@dataclass
class AIMv2ReferenceConfig:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 8
    ffn_hidden_size: int = 2816
    patch_size: int = 14
    num_channels: int = 3
    rms_norm_eps: float = 1e-5
    position_embedding: str = "learned"  # "learned" | "sincos"
    image_size: int = 224
    decoder_hidden_size: int = 1024
    decoder_num_layers: int = 12
    decoder_num_heads: int = 8
    decoder_ffn_hidden_size: int = 2816
    decoder_mrope_section: list[int] = field(default_factory=lambda: [16, 24, 24])
    rope_theta: float = 10000.0
    vocab_size: int = 49408


# -- masks and targets (shared with the megatron-core model) -------------------------------------
def encoder_prefix_allowed(segment_ids, is_image, image_prefix) -> torch.Tensor:
    """bool [B, 1, S, S], True where query (dim 2) may see key (dim 3) in the ENCODER.

    An image patch sees the image patches of its own sample that are in the prefix (bidirectional)
    or not after it (causal). Every other position (text, padding) sees only itself.
    """
    s = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    both_image = is_image[:, :, None] & is_image[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=is_image.device).tril()
    allowed = same & both_image & (image_prefix[:, None, :] | causal)
    self_only = torch.eye(s, dtype=torch.bool, device=is_image.device) & ~is_image[:, :, None]
    return (allowed | self_only).unsqueeze(1)


def causal_sample_allowed(segment_ids) -> torch.Tensor:
    """bool [B, 1, S, S]: the DECODER mask. Causal inside each packed sample; padding sees itself."""
    s = segment_ids.shape[1]
    valid = segment_ids >= 0
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, :, None]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    padding_self = torch.eye(s, dtype=torch.bool, device=segment_ids.device) & ~valid[:, :, None]
    return (same & causal | padding_self).unsqueeze(1)


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """[..., D] -> per-patch normalised [..., D]: mean 0, unbiased variance 1 (MAE's target)."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    return (patches - mean) / (var + TARGET_EPS).sqrt()


def has_next_patch_target(is_image, segment_ids, image_prefix) -> torch.Tensor:
    """bool [B, S]: position s regresses patch s + 1, i.e. s and s + 1 are image patches of the
    same sample and patch s + 1 is NOT in the prefix (the pixel loss ignores prefix patches)."""
    has = torch.zeros_like(is_image)
    has[:, :-1] = (is_image[:, :-1] & is_image[:, 1:] & ~image_prefix[:, 1:]
                   & (segment_ids[:, :-1] == segment_ids[:, 1:]))
    return has


def next_patch_targets(image_patches, is_image, segment_ids, image_prefix):
    """What the pixel head at each position must predict (see `has_next_patch_target`).

    Args: image_patches [N, D]; is_image, image_prefix bool [B, S]; segment_ids int [B, S].
    Returns: targets float32 [B, S, D] (normalised patch s + 1; 0 where none), has_target bool [B, S].
    """
    b, s = is_image.shape
    placed = image_patches.new_zeros(b, s, image_patches.shape[-1], dtype=torch.float32)
    placed = placed.masked_scatter(is_image[..., None], image_patches.float())
    has = has_next_patch_target(is_image, segment_ids, image_prefix)
    targets = torch.zeros_like(placed)
    targets[:, :-1] = normalize_patches(placed[:, 1:])
    return targets * has[..., None], has


def sincos_position_embedding(rows, cols, dim: int) -> torch.Tensor:
    """2-D sin-cos embedding of patches at (row, col): [N] -> float32 [N, dim], laid out
    [sin(col w) | cos(col w) | sin(row w) | cos(row w)], w_i = 1e4^(-i / (dim/4)) (AIMv2 native)."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64, device=rows.device) / quarter)
    c, r = cols.double()[:, None] * omega, rows.double()[:, None] * omega
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=-1).float()


# -- modules (names follow transformers' Aimv2VisionModel) -----------------------------------------
class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(width, width, bias=False) for _ in range(4))

    def forward(self, x, allowed, freqs=None):
        """x [B, S, W], allowed bool [B, 1, S, S], freqs [B, S, head_dim] or None -> [B, S, W]."""
        b, s, w = x.shape
        q, k, v = (p(x).reshape(b, s, self.heads, -1).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if freqs is not None:
            q, k = apply_rotary(q, freqs), apply_rotary(k, freqs)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, w))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.rms_norm1, self.rms_norm2 = nn.RMSNorm(width, eps=eps), nn.RMSNorm(width, eps=eps)
        self.attention = Attention(width, heads)
        self.ffn = SwiGLU(width, ffn)

    def forward(self, x, allowed, freqs=None):
        x = x + self.attention(self.rms_norm1(x), allowed, freqs)
        return x + self.ffn(self.rms_norm2(x))


class Stack(nn.Module):
    def __init__(self, n: int, *args):
        super().__init__()
        self.layers = nn.ModuleList(Block(*args) for _ in range(n))


class VisionEmbeddings(nn.Module):
    """Conv patch embedding (with bias) -> RMSNorm -> + absolute position embedding."""

    def __init__(self, c: AIMv2ReferenceConfig):
        super().__init__()
        p, self.position_kind = c.patch_size, c.position_embedding
        self.grid = c.image_size // p
        self.patch_embed = nn.Conv2d(c.num_channels, c.hidden_size, kernel_size=p, stride=p)
        self.rms_norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
        if self.position_kind == "learned":
            self.position_embedding = nn.Embedding(self.grid * self.grid, c.hidden_size)

    def forward(self, patches, rows, cols):
        """patches [N, C*P*P] (channel, row, col order); rows, cols [N] -> [N, W]."""
        w = self.patch_embed.weight
        x = self.rms_norm(F.linear(patches.to(w.dtype), w.reshape(w.shape[0], -1), self.patch_embed.bias))
        if self.position_kind == "learned":
            return x + self.position_embedding(rows * self.grid + cols)
        return x + sincos_position_embedding(rows, cols, x.shape[-1]).to(x.dtype)


class VisionEncoder(nn.Module):
    """State dict == transformers `Aimv2VisionModel` with use_head=False."""

    def __init__(self, c: AIMv2ReferenceConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(c)
        self.encoder = Stack(c.num_layers, c.hidden_size, c.num_heads, c.ffn_hidden_size, c.rms_norm_eps)
        self.rms_norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)

    def forward(self, image_patches, is_image, position_ids, segment_ids, image_prefix):
        """-> features [B, S, W] after the final RMSNorm (0-input rows at text/padding positions)."""
        b, s = is_image.shape
        rows, cols = position_ids[1][is_image], position_ids[2][is_image]
        x_img = self.embeddings(image_patches, rows, cols)
        x = x_img.new_zeros(b, s, x_img.shape[-1]).masked_scatter(is_image[..., None], x_img)
        allowed = encoder_prefix_allowed(segment_ids, is_image, image_prefix)
        for layer in self.encoder.layers:
            x = layer(x, allowed)
        return self.rms_norm(x)


class AIMv2Reference(nn.Module):
    def __init__(self, c: AIMv2ReferenceConfig):
        super().__init__()
        self.config = c
        dw = c.decoder_hidden_size
        self.vision = VisionEncoder(c)
        self.proj = nn.Linear(c.hidden_size, dw, bias=False)
        self.embed_tokens = nn.Embedding(c.vocab_size, dw)
        self.decoder = Stack(c.decoder_num_layers, dw, c.decoder_num_heads, c.decoder_ffn_hidden_size,
                             c.rms_norm_eps)
        self.norm = nn.RMSNorm(dw, eps=c.rms_norm_eps)
        self.pixel_head = nn.Linear(dw, c.num_channels * c.patch_size ** 2, bias=False)
        self.lm_head = nn.Linear(dw, c.vocab_size, bias=False)

    def forward_packed(self, tokens, image_patches, is_image, position_ids, segment_ids, image_prefix):
        """-> dict(features [B, S, W] encoder output, pixels [B, S, 3*P*P], logits [B, S, V])."""
        c = self.config
        features = self.vision(image_patches, is_image, position_ids, segment_ids, image_prefix)
        h = torch.where(is_image[..., None], self.proj(features), self.embed_tokens(tokens))
        freqs = interleaved_mrope_freqs(position_ids, c.decoder_hidden_size // c.decoder_num_heads,
                                        c.rope_theta, c.decoder_mrope_section)
        allowed = causal_sample_allowed(segment_ids)
        for layer in self.decoder.layers:
            h = layer(h, allowed, freqs)
        h = self.norm(h)
        return {"features": features, "pixels": self.pixel_head(h), "logits": self.lm_head(h)}

    def loss_terms(self, batch, image_prefix):
        """(text CE sum, text token count, pixel MSE sum, pixel patch count) of one micro-batch.
        A patch's MSE is the mean over its 3*P*P values."""
        keys = ("tokens", "image_patches", "is_image", "position_ids", "segment_ids")
        out = self.forward_packed(*(batch[k] for k in keys), image_prefix)
        mask = batch["loss_mask"]
        ce = F.cross_entropy(out["logits"].flatten(0, 1), batch["labels"].clamp(min=0).flatten(),
                             reduction="none").view_as(mask)
        targets, has = next_patch_targets(batch["image_patches"], batch["is_image"],
                                          batch["segment_ids"], image_prefix)
        mse = ((out["pixels"] - targets) ** 2).mean(-1) * has
        return (ce * mask).sum(), mask.sum(), mse.sum(), has.sum()
