"""The two layer specs, chosen in one place from the config: `local` (pure torch) and `te`.

`local` is the CPU path and the reference (pure torch: megatron-core's tensor-parallel linears,
torch LayerNorm, torch SDPA for the dense mask); `te` swaps in Transformer Engine modules (fused
LayerNorm+Linear, FP8-capable GEMMs, cuDNN/flash attention) without touching the model. Transformer
Engine is imported only when `te` is chosen, because it does not install on machines without CUDA.
The core attention is megatron-core's (dense S x S mask) or ours (`PrefixLMVarlenAttention`, no S x S
mask) according to `model.attention`.
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from genlip_megatron.model.layer import GenLIPTransformerLayer
from genlip_megatron.model.prefix_lm_attention import PrefixLMVarlenAttention
from genlip_megatron.model.sdpa_attention import SDPAAttention

LAYER_SPECS = ("local", "te")
ATTENTION_KINDS = ("dense", "fused")


def _local_modules(attention: str) -> dict:
    backend = LocalSpecProvider()
    norm = backend.layer_norm(rms_norm=False)
    return dict(
        input_layernorm=norm, pre_mlp_layernorm=norm,
        linear_qkv=backend.column_parallel_linear(),
        linear_proj=backend.row_parallel_linear(),
        linear_fc1=backend.column_parallel_linear(),
        linear_fc2=backend.row_parallel_linear(),
        core_attention=SDPAAttention if attention == "dense" else PrefixLMVarlenAttention,
    )


def _te_modules(attention: str) -> dict:
    # Imported here on purpose: Transformer Engine exists only on GPU machines.
    from megatron.core.extensions.transformer_engine import (
        TEDotProductAttention,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )

    # TE fuses each pre-norm into the following column-parallel linear.
    return dict(
        input_layernorm=IdentityOp, pre_mlp_layernorm=IdentityOp,
        linear_qkv=TELayerNormColumnParallelLinear,
        linear_proj=TERowParallelLinear,
        linear_fc1=TELayerNormColumnParallelLinear,
        linear_fc2=TERowParallelLinear,
        core_attention=(TEDotProductAttention if attention == "dense"
                        else PrefixLMVarlenAttention),
    )


def final_norm_spec(layer_spec: str):
    """The module used for `ln_post` (the block's final LayerNorm)."""
    if layer_spec == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return LocalSpecProvider().layer_norm(rms_norm=False)


def genlip_layer_spec(layer_spec: str = "local", attention: str = "dense", *,
                      layer_scale_init: float = 0.1, drop_path_rate: float = 0.0,
                      drop_path_schedule: str = "constant") -> ModuleSpec:
    """ModuleSpec of one GenLIP layer (prefix-LM self-attention with output gate, SwiGLU MLP)."""
    if layer_spec not in LAYER_SPECS:
        raise ValueError(f"model.layer_spec: {layer_spec!r} is not one of {LAYER_SPECS}")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"model.attention: {attention!r} is not one of {ATTENTION_KINDS}")
    m = _te_modules(attention) if layer_spec == "te" else _local_modules(attention)
    return ModuleSpec(
        module=GenLIPTransformerLayer,
        params={"layer_scale_init": layer_scale_init, "drop_path_rate": drop_path_rate,
                "drop_path_schedule": drop_path_schedule},
        submodules=TransformerLayerSubmodules(
            input_layernorm=m["input_layernorm"],
            self_attention=ModuleSpec(
                module=SelfAttention,
                # The prefix-LM mask is neither causal nor padding: megatron-core applies the
                # boolean mask it is given (dense) or our kernel ignores the type (fused).
                params={"attn_mask_type": AttnMaskType.arbitrary},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=m["linear_qkv"], core_attention=m["core_attention"],
                    linear_proj=m["linear_proj"], q_layernorm=IdentityOp, k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=m["pre_mlp_layernorm"],
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(
                linear_fc1=m["linear_fc1"], linear_fc2=m["linear_fc2"])),
            mlp_bda=get_bias_dropout_add,
        ),
    )
