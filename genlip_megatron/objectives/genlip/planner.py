"""GenLIP's planner model: parameters, per-GPU memory, FLOPs and communication volume of a layout,
from the config alone (`genlip plan`; docs/scaling.md). Shared storage rules: objectives/planning.py.

Counted the way our implementation stores things (genlip_megatron/model):
- activations autograd saves per layer and token (E = element bytes, t = TP, H = width, F = SwiGLU):
    replicated unless sequence parallel: LN1 in, LN1 out, LayerScale1 in, LN2 in, LN2 out,
                                         LayerScale2 in                                     -> 6H
    split by TP: attention 7.75H (the prefix-LM kernel's per-sample gathered q/k/v and its output,
                 the output gate's two inputs, the gated output; RoPE is one compiled kernel that
                 keeps only the angles) and SwiGLU 3F (bias + SwiGLU compiled: its 2F input, fc2's F)
  These counts are what torch.autograd.graph.saved_tensors_hooks sees in our layer (CPU, fused
  attention; tests/launch/test_memory_estimate.py recounts them). The GPU flash kernel keeps no
  per-head intermediates the CPU kernel keeps, so on GPU this errs on the safe side.
  attention=dense adds the S x S softmax probabilities per head. Context parallelism (CP c) keeps
  S/c tokens per rank, plus the keys and values of the other (c-1) S/c positions that the fused
  attention gathers (model/context_attention.py) and saves for its backward: 2 (1 - 1/c) S H/t.
- the last stage's head at its backward peak: the cross-entropy's saved fp32 softmax (turned into
  the logits' gradient in place) plus the gradient through the padding mask and, under bf16, its
  cast back: 8 bytes per [row, V/t] element in both precisions. The head runs on the loss positions
  only (model/lm_head.py): rows = the micro-batch's text share of tokens (every text token counted
  as a loss position, an upper bound), gathered from all TP ranks under SP.
- 1F1B pipelining holds min(m, p) micro-batches on the first stage, which carries L/p layers;
  interleaving (VPP v) raises that to L (1 + (p-1)/(p v)) layers' worth (Korthikanti et al. 2022).
- full recompute keeps only each layer's input (H, split under SP) plus one layer's full set.
Imports neither torch nor megatron.
"""

from __future__ import annotations

from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.objectives.planning import (
    LOGIT_BYTES,
    element_bytes,
    image_tokens,
    in_flight,
    sequence_tokens,
    training_state,
)

# Saved activations per token and layer, in units of H or F elements (see the module docstring).
REPLICATED_H, ATTENTION_H, MLP_F = 6.0, 7.75, 3.0


def layer_params(cfg) -> int:
    """One transformer block: q+gate (2H x H), k, v, out (H x H each), SwiGLU (3 H x F), biases,
    two LayerNorms and two LayerScales."""
    h, f = cfg.model.hidden_size, cfg.model.ffn_hidden_size
    return 5 * h * h + 3 * h * f + (2 * h + h + h + h) + (2 * f + h) + 2 * 2 * h + 2 * h


def embedding_params(cfg, tp: int = 1) -> tuple[int, int]:
    """(first-stage extras, last-stage extras): patch embedding + token embedding (+ in_proj);
    ln_post (+ proj) + lm_head. Vocabulary padded as the model pads it."""
    m = cfg.model
    h, e, v = m.hidden_size, m.text_embed_dim or m.hidden_size, padded_vocab_size(m, tp)
    patch = m.num_channels * m.patch_size**2 * h + h
    first = patch + v * e + (e * h + h if e != h else 0)
    last = 2 * h + (h * e + e if e != h else 0) + v * e
    return first, last


def total_params(cfg, tp: int = 1) -> int:
    first, last = embedding_params(cfg, tp)
    return cfg.model.num_layers * layer_params(cfg) + first + last


def activation_bytes_per_layer(cfg, layout) -> dict[str, float]:
    """Saved activations of one layer for one micro-batch on one rank, without recompute."""
    m, e = cfg.model, element_bytes(cfg)
    tokens = sequence_tokens(cfg, layout)
    h, f, t = m.hidden_size, m.ffn_hidden_size, layout.tp
    replicated = REPLICATED_H * h / (t if layout.sequence_parallel else 1)
    split = (ATTENTION_H * h + MLP_F * f) / t
    out = {"block": tokens * (replicated + split) * e}
    if layout.cp > 1:  # the keys and values gathered from the other CP ranks, saved by the kernel
        out["context_kv"] = 2 * (cfg.data.seq_length * layout.micro_batch_size - tokens) * h / t * e
    if m.attention == "dense" and layout.recompute == "none":
        # softmax probabilities [b, heads/t, S, S/cp] in the compute dtype
        out["attention_probs"] = m.num_attention_heads / t * cfg.data.seq_length * tokens * e
    return out


def loss_token_share(cfg, text_tokens: float) -> float:
    """Share of a pack's tokens that carry loss, for samples of `image_tokens(cfg)` image tokens and
    `text_tokens` text tokens (all counted as loss positions: an upper bound)."""
    return text_tokens / (image_tokens(cfg) + text_tokens)


def memory_breakdown(cfg, layout, micro_batches: int, text_tokens: float) -> dict[str, float]:
    """Bytes on the most loaded rank, by component. The first stage (embeddings, most in-flight
    micro-batches) is taken; with PP > 1 the lm_head sits on the last stage, and the larger of the
    two stages' sums is reported."""
    e = element_bytes(cfg)
    first, last = embedding_params(cfg, layout.tp)
    stage_layers = cfg.model.num_layers / layout.pp
    body = stage_layers * layer_params(cfg) / layout.tp
    per_layer = sum(activation_bytes_per_layer(cfg, layout).values())
    tokens = sequence_tokens(cfg, layout)
    layer_input = tokens * cfg.model.hidden_size / (layout.tp if layout.sequence_parallel else 1) * e

    def activations(layers_held: float) -> float:
        if layout.recompute == "full":  # inputs of every held layer + one layer being recomputed
            return layers_held * layer_input + per_layer
        return layers_held * per_layer

    head_rows = tokens * loss_token_share(cfg, text_tokens)
    logits = head_rows * padded_vocab_size(cfg.model, layout.tp) / layout.tp * LOGIT_BYTES
    held_first = stage_layers * in_flight(layout, micro_batches)
    if layout.pp == 1:
        return {**training_state(cfg, layout, (first + last) / layout.tp + body),
                "activations": activations(held_first), "logits": logits}
    # the last stage runs one micro-batch at a time in 1F1B (its chunks' share under VPP)
    first_stage = {**training_state(cfg, layout, first / layout.tp + body), "activations": activations(held_first)}
    last_stage = {**training_state(cfg, layout, last / layout.tp + body), "activations": activations(stage_layers),
                  "logits": logits}
    return max((first_stage, last_stage), key=lambda s: sum(s.values()))


def forward_flops_per_sequence(cfg, text_tokens: float) -> float:
    """Model FLOPs of one forward over one packed sequence of samples with `image_tokens(cfg)` image
    and `text_tokens` text tokens each (the count of objectives/genlip/flops.py, applied to mean
    samples)."""
    m = cfg.model
    h, f, e = m.hidden_size, m.ffn_hidden_size, m.text_embed_dim or m.hidden_size
    v = padded_vocab_size(m, 1)
    n_img, n_txt = image_tokens(cfg), text_tokens
    samples = cfg.data.seq_length / (n_img + n_txt)
    tokens = samples * (n_img + n_txt)
    pairs = samples * (n_img**2 + n_txt * n_img + n_txt * (n_txt + 1) / 2)
    out = 2 * samples * n_img * m.num_channels * m.patch_size**2 * h
    # proj and the lm_head run on the loss positions only; every text token is counted as one (the
    # prompt's few tokens carry no loss: an upper bound)
    loss_tokens = samples * n_txt
    if e != h:
        out += 2 * samples * n_txt * e * h + 2 * loss_tokens * h * e
    out += m.num_layers * (2 * tokens * (5 * h * h + 3 * h * f) + 4 * h * pairs)
    return out + 2 * loss_tokens * e * v


def step_flops(cfg, text_tokens: float) -> float:
    """Model FLOPs of one optimizer step (forward + backward = 3 forwards) over the global batch."""
    return 3 * forward_flops_per_sequence(cfg, text_tokens) * cfg.train.global_batch_size


def traffic(cfg, layout, text_tokens: float = 0.0) -> tuple[float, float]:
    """(tokens x width summed over the layers of one stage, per micro-batch; tokens x width sent
    between stages per micro-batch): every layer runs on the whole sequence at width H, whatever
    the samples' text share (text_tokens, which AIMv2's traffic needs, does not change it)."""
    activation = sequence_tokens(cfg, layout) * cfg.model.hidden_size
    return activation * cfg.model.num_layers / layout.pp, activation
