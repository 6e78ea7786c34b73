"""Translate our config tree into megatron-core's TransformerConfig for GenLIP.

The architecture switches that make megatron-core's layer a GenLIP layer live here: LayerNorm
(eps 1e-6), biases on every linear, SwiGLU (`gated_linear_unit` + silu), the attention output gate,
no dropout, per-token loss accounting. Fusions that need apex/TE kernels are switched off; they are
re-enabled by the TE spec where TE provides them. Fusions megatron-core compiles itself (`jit_fuser`,
torch.compile: bias + SwiGLU) are on for every device, and RoPE runs through our fused kernel
(model/rope_kernel.py); model/compile_settings.py makes their kernels static per shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from genlip_megatron.config.schema import Config, head_dim
from genlip_megatron.model import compile_settings, rope_kernel

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


def genlip_transformer_config(cfg: Config) -> TransformerConfig:
    m, p, t = cfg.model, cfg.parallel, cfg.train
    dtype = _DTYPES[t.precision]
    recompute = {"none": {}, "selective": {"recompute_granularity": "selective"},
                 "full": {"recompute_granularity": "full", "recompute_method": "uniform",
                          "recompute_num_layers": m.recompute_num_layers}}[m.recompute]
    fp8 = {"fp8": "hybrid", "fp8_recipe": "delayed"} if t.precision == "fp8" else {}
    rope_kernel.install()  # before TransformerConfig checks that a fused RoPE kernel exists
    compile_settings.apply()  # one static kernel per shape: results never depend on what ran before
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=head_dim(m),
        normalization="LayerNorm",
        layernorm_epsilon=m.layer_norm_eps,
        add_bias_linear=True,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        attention_output_gate=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        bias_activation_fusion=True,  # megatron's compiled bias + SwiGLU (one pass, no apex/TE)
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=True,  # model/rope_kernel.py
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel,
        context_parallel_size=p.context_parallel_size,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        autocast_dtype=dtype,
        # Megatron-LM #750/#1450: batched p2p pairs sends and receives wrongly when the next and
        # previous pipeline rank coincide (PP=2 with VPP), silently corrupting activations.
        batch_p2p_comm=False,
        calculate_per_token_loss=True,
        use_cpu_initialization=t.device == "cpu",
        **recompute,
        **fp8,
    )
