"""GenLIP's transformer layer: megatron-core's TransformerLayer plus LayerScale and DropPath.

    x = x + DropPath(LayerScale1(Attn(LN1(x))))
    x = x + DropPath(LayerScale2(MLP(LN2(x))))

megatron-core has neither LayerScale nor DropPath, but every residual branch of its layer ends in a
"bias-dropout-add" callable. We replace those two callables with ones that add the branch bias, scale
per channel, drop the branch per sequence and add the residual, so attention, MLP, tensor and
sequence parallelism, recompute and the TE/local choice all stay megatron-core's own. Without
dropout (GenLIP has none) the branch is one kernel compiled by megatron-core's `jit_fuser`.
"""

from __future__ import annotations

import torch
from megatron.core.jit import jit_fuser
from megatron.core.transformer.transformer_layer import TransformerLayer


class LayerScale(torch.nn.Module):
    """Per-channel scale `x * lambda1` (CaiT). Parameter name matches the official `lambda1`."""

    def __init__(self, dim: int, init_value: float, sequence_parallel: bool):
        super().__init__()
        self.lambda1 = torch.nn.Parameter(torch.full((dim,), float(init_value)))
        # NOTE: under sequence parallelism each TP rank scales a different slice of the sequence,
        # so the replicated parameter's gradient must be summed across TP ranks; megatron-core's
        # finalize_model_grads does that for every parameter marked like this (as for LayerNorm).
        self.lambda1.sequence_parallel = sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


DROP_PATH_SCHEDULES = ("constant", "linear")


def drop_path_rate_of_layer(rate: float, schedule: str, layer_number: int, num_layers: int) -> float:
    """Stochastic-depth rate of global, 1-based `layer_number`.

    "constant" (the official GenLIP recipe): `rate` in every layer. "linear" (the stochastic-depth
    paper's ramp): 0 at the first layer, growing linearly to `rate` at the last.
    """
    if schedule == "constant":
        return float(rate)
    if schedule == "linear":
        return float(rate) * (layer_number - 1) / max(num_layers - 1, 1)
    raise ValueError(f"model.drop_path_schedule: {schedule!r} is not one of {DROP_PATH_SCHEDULES}")


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a [S, B, H] branch: drop whole sequences (dim 1), rescale the kept ones.

    NOTE: one packed sequence holds several samples; like the official code we drop per batch row
    (per packed sequence), not per sample. The mask comes from the default generator, which
    megatron-core seeds identically on every tensor-parallel rank, so TP ranks agree.
    """
    if prob <= 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = torch.empty((1, x.shape[1], 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


@jit_fuser
def _scaled_residual(x: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, keep: torch.Tensor,
                     residual: torch.Tensor) -> torch.Tensor:
    """residual + (x + bias) * scale * keep in one pass; keep: [1, B, 1] DropPath factors (or 1)."""
    return residual + ((x + bias) * scale * keep).to(residual.dtype)


def _keep_factors(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """DropPath as a multiplier: [1, B, 1] of 0 or 1/keep (see `drop_path`), or a scalar 1."""
    if prob <= 0.0 or not training:
        return x.new_ones(())
    keep = 1.0 - prob
    return torch.empty((1, x.shape[1], 1), dtype=x.dtype, device=x.device).bernoulli_(keep) / keep


class GenLIPTransformerLayer(TransformerLayer):
    """TransformerLayer whose two residual branches pass through LayerScale and DropPath."""

    def __init__(self, config, submodules, layer_number: int = 1, hidden_dropout=None,
                 pg_collection=None, vp_stage=None, *, layer_scale_init: float = 0.1,
                 drop_path_rate: float = 0.0, drop_path_schedule: str = "constant"):
        super().__init__(config, submodules, layer_number=layer_number,
                         hidden_dropout=hidden_dropout, pg_collection=pg_collection,
                         vp_stage=vp_stage)
        sp = bool(config.sequence_parallel)
        self.layer_scale1 = LayerScale(config.hidden_size, layer_scale_init, sp)
        self.layer_scale2 = LayerScale(config.hidden_size, layer_scale_init, sp)
        # layer_number is global and 1-based, so every pipeline stage agrees on the schedule.
        self.drop_path_rate = drop_path_rate_of_layer(drop_path_rate, drop_path_schedule,
                                                      self.layer_number, config.num_layers)
        self.self_attn_bda = self._residual_factory(self.layer_scale1)
        self.mlp_bda = self._residual_factory(self.layer_scale2)

    def _residual_factory(self, scale: LayerScale):
        """Build the callable TransformerLayer invokes as `bda(training, fused)(out_bias, residual, p)`."""

        def make(training: bool, fused: bool):
            def scaled_residual(x_with_bias, residual, dropout_prob):
                x, bias = x_with_bias
                if dropout_prob == 0.0 or not training:
                    keep = _keep_factors(x, self.drop_path_rate, training)
                    return _scaled_residual(x, bias if bias is not None else x.new_zeros(()),
                                            scale.lambda1, keep, residual)
                if bias is not None:
                    x = x + bias
                x = torch.nn.functional.dropout(x, p=dropout_prob, training=training)
                x = drop_path(scale(x), self.drop_path_rate, training)
                return residual + x.to(residual.dtype)

            return scaled_residual

        return make
