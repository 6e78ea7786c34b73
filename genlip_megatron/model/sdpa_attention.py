"""Dense-mask core attention through torch's scaled_dot_product_attention (the local spec).

megatron-core's local DotProductAttention materialises the [B, h, S, S] scores, fills the mask with
-10000 and runs an unfused softmax; torch's SDPA does the same maths in one fused CPU/GPU kernel,
which is what keeps the megatron-core model as fast as the plain-torch reference on CPU
(bench/model_step.py). Mask convention as megatron-core: bool [B, 1, S, S], True = masked.
"""

from __future__ import annotations

import math

import torch
from megatron.core.transformer.module import MegatronModule


class SDPAAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type=None, attention_type="self",
                 attention_dropout=None, softmax_scale=None, **unused):
        super().__init__(config=config)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        """query/key/value [S, B, h, d], attention_mask bool [B, 1, S, S] -> [S, B, h * d]."""
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAAttention takes a dense boolean mask only")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [B, h, S, d]
        if k.shape[1] != q.shape[1]:  # grouped-query attention: repeat key/value heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=~attention_mask, scale=self.softmax_scale,
            dropout_p=self.dropout if self.training else 0.0)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)
