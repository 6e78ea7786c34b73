"""Model FLOPs of an AIMv2 training step: the prefix-attention encoder on the image patches, the
causal decoder on [projected image features][text], the pixel and text heads.

Exact for the packed batch and the drawn prefixes at hand (it reads the batch's sample spans and
`image_prefix`). A matmul [m, k] x [k, n] counts 2*m*k*n. Per FORWARD pass, with W / F / Le the
encoder's width, SwiGLU hidden and layers, Hd / Fd / Ld the decoder's, V the padded vocabulary,
D = C*P*P, N = image patches and T = real tokens (image + text) of the batch:

    patch embed      2 * N * D * W
    encoder layer    2 * N * (4*W*W)  q, k, v, out (no output gate)  + 2 * N * (3*W*F)  SwiGLU
                   + 4 * W * enc_pairs
    projection       2 * N * W * Hd
    decoder layer    2 * T * (4*Hd*Hd) + 2 * T * (3*Hd*Fd) + 4 * Hd * dec_pairs
    pixel head       2 * T * Hd * D
    text head        2 * N_loss * Hd * V              (training runs it on the loss positions only,
                                                      model/lm_head.py)

Attention pairs the masks allow, per sample with n image patches of which p are prefix and m tokens
in all: encoder p*p (prefix patches see the prefix) + sum over the others i = p..n-1 of (i + 1)
(the prefix and themselves causally) = p^2 + (n(n+1) - p(p+1))/2; decoder m(m+1)/2 (causal within
the sample). Padding is not counted; the pixel head runs on every real position (as the model does).
A step is 3x the forward; recompute and element-wise work are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AIMv2Shape:
    width: int
    ffn: int
    layers: int
    decoder_width: int
    decoder_ffn: int
    decoder_layers: int
    padded_vocab: int
    patch_dim: int  # C * P * P

    @classmethod
    def from_config(cls, m, padded_vocab: int) -> AIMv2Shape:
        return cls(m.hidden_size, m.ffn_hidden_size, m.num_layers, m.decoder_hidden_size,
                   m.decoder_ffn_hidden_size, m.decoder_num_layers, padded_vocab,
                   m.num_channels * m.patch_size ** 2)


@dataclass(frozen=True)
class AIMv2Counts:
    image_tokens: int
    tokens: int
    encoder_pairs: int
    decoder_pairs: int
    loss_tokens: int  # positions that carry caption loss: the rows the text head runs on


def count_tokens(spans: torch.Tensor, image_prefix: torch.Tensor, loss_mask: torch.Tensor) -> AIMv2Counts:
    """Counts of one micro-batch: spans int64 [K, 3] (PackedBatch.spans), image_prefix bool [B, S],
    loss_mask [B, S]."""
    start, text_start, end = spans.long().unbind(1)
    n_img, n_all = text_start - start, end - start
    in_prefix = torch.nn.functional.pad(image_prefix.reshape(-1).long().cumsum(0), (1, 0))
    p = in_prefix[text_start] - in_prefix[start]
    encoder = p * p + (n_img * (n_img + 1) - p * (p + 1)) // 2
    decoder = n_all * (n_all + 1) // 2
    return AIMv2Counts(int(n_img.sum()), int(n_all.sum()), int(encoder.sum()), int(decoder.sum()),
                       int((loss_mask != 0).sum()))


def forward_flops(s: AIMv2Shape, c: AIMv2Counts) -> int:
    n, t = c.image_tokens, c.tokens
    encoder = 2 * n * s.patch_dim * s.width + s.layers * (
        2 * n * 4 * s.width ** 2 + 2 * n * 3 * s.width * s.ffn + 4 * s.width * c.encoder_pairs)
    projection = 2 * n * s.width * s.decoder_width
    decoder = s.decoder_layers * (2 * t * 4 * s.decoder_width ** 2 + 2 * t * 3 * s.decoder_width * s.decoder_ffn
                                  + 4 * s.decoder_width * c.decoder_pairs)
    heads = 2 * t * s.decoder_width * s.patch_dim + 2 * c.loss_tokens * s.decoder_width * s.padded_vocab
    return encoder + projection + decoder + heads


def train_step_flops(s: AIMv2Shape, c: AIMv2Counts) -> int:
    """Forward + backward (backward = 2 x forward)."""
    return 3 * forward_flops(s, c)
