"""megatron-core's core-attention module for the fused path (`model.attention=fused`).

It receives `attention_mask` = the [K, 3] sample spans (built once per forward by the model, so
megatron-core's recompute can checkpoint it like any tensor argument) and, under context
parallelism, `packed_seq_params` = model/context_attention.ContextParallelParams. Without it, the
whole sequence is on this rank: model/varlen_attention.py. With it: this rank's queries against the
keys and values gathered over the CP group, model/context_attention.py.
"""

from __future__ import annotations

import math

from megatron.core.transformer.module import MegatronModule

from genlip_megatron.model.context_attention import (
    ContextParallelParams,
    gather_keys_values,
    prefix_lm_context_attention,
)
from genlip_megatron.model.varlen_attention import prefix_lm_block_attention, prefix_lm_varlen_attention


class PrefixLMVarlenAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type=None, attention_type="self",
                 attention_dropout=None, softmax_scale=None, **unused):
        super().__init__(config=config)
        if config.attention_dropout > 0:
            raise ValueError("model.attention=fused does not implement attention dropout")
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(head_dim)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        """query/key/value: [S', B, h, d] (S' = S/cp under CP) -> context [S', B, h * d]."""
        s, b, h, d = query.shape
        if packed_seq_params is None and not query.is_cuda:
            # CPU blocks gather straight from the [S, B] order: no transposes in or out.
            q, k, v = (t.flatten(0, 1) for t in (query, key, value))
            out = prefix_lm_block_attention(q, k, v, attention_mask, self.softmax_scale, rows=b, sequence_major=True)
            return out.view(s, b, h * d)
        q, k, v = (t.transpose(0, 1).reshape(b * s, h, d) for t in (query, key, value))
        if isinstance(packed_seq_params, ContextParallelParams):
            k, v = gather_keys_values(k, v, packed_seq_params)
            blocks = None if q.is_cuda else packed_seq_params.blocks(attention_mask)
            out = prefix_lm_context_attention(q, k, v, attention_mask, packed_seq_params.queries,
                                              self.softmax_scale, blocks=blocks)
        elif packed_seq_params is not None:
            raise ValueError(f"the fused prefix-LM attention does not take {type(packed_seq_params).__name__}")
        else:
            out = prefix_lm_varlen_attention(q, k, v, attention_mask, self.softmax_scale)
        return out.reshape(b, s, h * d).transpose(0, 1).contiguous()
