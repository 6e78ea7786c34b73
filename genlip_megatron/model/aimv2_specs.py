"""AIMv2's layer spec and TransformerConfigs: a plain megatron-core TransformerLayer (no LayerScale,
no DropPath), RMSNorm pre-norms, no biases, SwiGLU, dense boolean mask through torch SDPA.

The same spec serves the prefix-attention encoder and the causal decoder: the mask decides which
(both are megatron's `arbitrary` mask, True = masked). `local` is pure torch (the CPU path and the
reference); `te` takes GenLIP's Transformer Engine modules, whose fused norms follow
`config.normalization` (RMSNorm here).
"""

from __future__ import annotations

import copy
import dataclasses

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from genlip_megatron.model.sdpa_attention import SDPAAttention
from genlip_megatron.model.specs import LAYER_SPECS, _te_modules
from genlip_megatron.model.transformer_config import genlip_transformer_config


def _local_modules() -> dict:
    backend = LocalSpecProvider()
    norm = backend.layer_norm(rms_norm=True)  # WrappedTorchNorm -> torch.nn.RMSNorm
    return {"input_layernorm": norm, "pre_mlp_layernorm": norm,
            "linear_qkv": backend.column_parallel_linear(), "linear_proj": backend.row_parallel_linear(),
            "linear_fc1": backend.column_parallel_linear(), "linear_fc2": backend.row_parallel_linear(),
            "core_attention": SDPAAttention}


def final_rms_norm_spec(layer_spec: str):
    if layer_spec == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return LocalSpecProvider().layer_norm(rms_norm=True)


def aimv2_layer_spec(layer_spec: str = "local") -> ModuleSpec:
    """One AIMv2 block (encoder or decoder): RMSNorm -> attention -> RMSNorm -> SwiGLU."""
    if layer_spec not in LAYER_SPECS:
        raise ValueError(f"model.layer_spec: {layer_spec!r} is not one of {LAYER_SPECS}")
    m = _te_modules("dense") if layer_spec == "te" else _local_modules()
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=m["input_layernorm"],
        self_attention=ModuleSpec(
            module=SelfAttention, params={"attn_mask_type": AttnMaskType.arbitrary},
            submodules=SelfAttentionSubmodules(
                linear_qkv=m["linear_qkv"], core_attention=m["core_attention"],
                linear_proj=m["linear_proj"], q_layernorm=IdentityOp, k_layernorm=IdentityOp)),
        self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=m["pre_mlp_layernorm"],
        mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=m["linear_fc1"],
                                                            linear_fc2=m["linear_fc2"])),
        mlp_bda=get_bias_dropout_add))


def _block_config(cfg, hidden: int, layers: int, heads: int, ffn: int, pipeline: int):
    """GenLIP's TransformerConfig (parallel layout, precision, recompute, fusions, per-token loss)
    for a block of this shape, switched to AIMv2's RMSNorm / no-bias / no-output-gate layer."""
    c = copy.deepcopy(cfg)
    m, p = c.model, c.parallel
    m.hidden_size, m.num_layers, m.num_attention_heads, m.ffn_hidden_size = hidden, layers, heads, ffn
    p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size = pipeline, None
    return dataclasses.replace(genlip_transformer_config(c), normalization="RMSNorm",
                               add_bias_linear=False, add_qkv_bias=False, attention_output_gate=False)


def aimv2_transformer_configs(cfg):
    """(stage, encoder, decoder) TransformerConfigs.

    NOTE: megatron's schedules size the activation sent between pipeline stages from the model's
    config ([S, B, config.hidden_size]): the stage config therefore has the DECODER width and the
    real pipeline size. The encoder and decoder blocks each live whole on one stage, so their configs
    say pipeline size 1 (megatron then builds every layer of the block, numbered from 1).
    """
    m, pp = cfg.model, cfg.parallel.pipeline_model_parallel_size
    decoder_shape = (m.decoder_hidden_size, m.decoder_num_layers, m.decoder_num_attention_heads,
                     m.decoder_ffn_hidden_size)
    stage = _block_config(cfg, *decoder_shape, pipeline=pp)
    encoder = _block_config(cfg, m.hidden_size, m.num_layers, m.num_attention_heads,
                            m.ffn_hidden_size, pipeline=1)
    decoder = _block_config(cfg, *decoder_shape, pipeline=1)
    return stage, encoder, decoder
