"""Parameters and per-GPU memory of a GenLIP training layout, from the config alone.

Counted the way our implementation stores things (genlip_megatron/model, training/model_setup.py):
- weights in the run's dtype (bf16: 2 B, fp32: 4 B); megatron DDP keeps an fp32 gradient buffer
  (`grad_reduce_in_fp32=True`, 4 B); AdamW keeps fp32 exp_avg + exp_avg_sq (8 B) plus, under bf16,
  an fp32 master copy (4 B). The distributed optimizer shards these optimizer bytes over DP x CP.
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

from dataclasses import dataclass

from genlip_megatron.config.schema import Config, padded_vocab_size

GIB = 1024**3
# Saved activations per token and layer, in units of H or F elements (see the module docstring).
REPLICATED_H, ATTENTION_H, MLP_F = 6.0, 7.75, 3.0
LOGIT_BYTES = 8  # per [token, V/t] element at the head's backward peak


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    cp: int = 1
    dp: int = 1
    micro_batch_size: int = 1
    recompute: str = "none"  # "none" | "selective" | "full"
    sequence_parallel: bool = False

    def describe(self) -> str:
        vpp = f" VPP{self.vpp}" if self.vpp else ""
        sp = "+SP" if self.sequence_parallel else ""
        return (f"TP{self.tp}{sp} PP{self.pp}{vpp} CP{self.cp} DP{self.dp} mbs{self.micro_batch_size} "
                f"recompute={self.recompute}")

    def overrides(self) -> list[str]:
        """The config overrides that select this layout (DP follows from the world size)."""
        return [f"parallel.tensor_model_parallel_size={self.tp}",
                f"parallel.pipeline_model_parallel_size={self.pp}",
                f"parallel.virtual_pipeline_model_parallel_size={self.vpp if self.vpp else 'null'}",
                f"parallel.context_parallel_size={self.cp}",
                f"parallel.sequence_parallel={'true' if self.sequence_parallel else 'false'}",
                f"train.micro_batch_size={self.micro_batch_size}", f"model.recompute={self.recompute}"]


def layer_params(cfg: Config) -> int:
    """One transformer block: q+gate (2H x H), k, v, out (H x H each), SwiGLU (3 H x F), biases,
    two LayerNorms and two LayerScales."""
    h, f = cfg.model.hidden_size, cfg.model.ffn_hidden_size
    return 5 * h * h + 3 * h * f + (2 * h + h + h + h) + (2 * f + h) + 2 * 2 * h + 2 * h


def embedding_params(cfg: Config, tp: int = 1) -> tuple[int, int]:
    """(first-stage extras, last-stage extras): patch embedding + token embedding (+ in_proj);
    ln_post (+ proj) + lm_head. Vocabulary padded as the model pads it."""
    m = cfg.model
    h, e, v = m.hidden_size, m.text_embed_dim or m.hidden_size, padded_vocab_size(m, tp)
    patch = m.num_channels * m.patch_size**2 * h + h
    first = patch + v * e + (e * h + h if e != h else 0)
    last = 2 * h + (h * e + e if e != h else 0) + v * e
    return first, last


def total_params(cfg: Config) -> int:
    first, last = embedding_params(cfg)
    return cfg.model.num_layers * layer_params(cfg) + first + last


def element_bytes(cfg: Config) -> int:
    return 4 if cfg.train.precision == "fp32" else 2


def image_tokens(cfg: Config) -> int:
    """Image tokens of the largest image: stage 2's pixel cap, or the square stage-1 image."""
    patch = cfg.model.patch_size
    if cfg.data.native_resolution:
        return cfg.data.max_pixels // patch**2
    return (cfg.data.image_size // patch) ** 2


def activation_bytes_per_layer(cfg: Config, layout: Layout) -> dict[str, float]:
    """Saved activations of one layer for one micro-batch on one rank, without recompute."""
    m, e = cfg.model, element_bytes(cfg)
    tokens = cfg.data.seq_length * layout.micro_batch_size / layout.cp
    h, f, t = m.hidden_size, m.ffn_hidden_size, layout.tp
    replicated = REPLICATED_H * h / (t if layout.sequence_parallel else 1)
    split = (ATTENTION_H * h + MLP_F * f) / t
    out = {"block": tokens * (replicated + split) * e}
    if layout.cp > 1:  # the keys and values gathered from the other CP ranks, saved by the kernel
        out["context_kv"] = 2 * (cfg.data.seq_length * layout.micro_batch_size - tokens) * h / t * e
    if m.attention == "dense" and layout.recompute == "none":
        # softmax probabilities [b, heads/t, S, S/cp] in the compute dtype (+ fp32 on CPU upcast)
        heads = m.num_attention_heads / t
        out["attention_probs"] = layout.micro_batch_size * heads * cfg.data.seq_length * tokens / \
            layout.micro_batch_size * e
    return out


def in_flight_layers(cfg: Config, layout: Layout, micro_batches: int) -> float:
    """Layer-micro-batches of activations the first pipeline stage holds at the 1F1B peak."""
    layers, p = cfg.model.num_layers, layout.pp
    if p == 1:
        return layers
    if layout.vpp:
        return layers * (1 + (p - 1) / (p * layout.vpp)) * min(1.0, micro_batches / p)
    return layers / p * min(micro_batches, p)


def loss_token_share(cfg: Config, text_tokens: float) -> float:
    """Share of a pack's tokens that carry loss, for samples of `image_tokens(cfg)` image tokens and
    `text_tokens` text tokens (all counted as loss positions: an upper bound)."""
    return text_tokens / (image_tokens(cfg) + text_tokens)


def memory_breakdown(cfg: Config, layout: Layout, micro_batches: int, text_tokens: float,
                     overhead_bytes: float = 0.0) -> dict[str, float]:
    """Bytes on the most loaded rank, by component. The first stage (embeddings, most in-flight
    micro-batches) is taken; with PP > 1 the lm_head sits on the last stage, and the larger of the
    two stages' sums is reported."""
    e = element_bytes(cfg)
    first, last = embedding_params(cfg, layout.tp)
    stage_layers = cfg.model.num_layers / layout.pp
    body = stage_layers * layer_params(cfg) / layout.tp
    shard = layout.dp * layout.cp if cfg.parallel.use_distributed_optimizer else 1
    optim_bytes = 8 + (4 if e == 2 else 0)

    def state(params: float) -> dict[str, float]:
        return {"weights": params * e, "gradients": params * 4, "optimizer": params * optim_bytes / shard}

    per_layer = sum(activation_bytes_per_layer(cfg, layout).values())
    tokens = cfg.data.seq_length * layout.micro_batch_size / layout.cp
    layer_input = tokens * cfg.model.hidden_size / (layout.tp if layout.sequence_parallel else 1) * e

    def activations(layers_held: float) -> float:
        if layout.recompute == "full":  # inputs of every held layer + one layer being recomputed
            return layers_held * layer_input + per_layer
        return layers_held * per_layer

    head_rows = tokens * loss_token_share(cfg, text_tokens)
    logits = head_rows * padded_vocab_size(cfg.model, layout.tp) / layout.tp * LOGIT_BYTES
    held_first = in_flight_layers(cfg, layout, micro_batches)
    if layout.pp == 1:
        stage = {**state((first + last) / layout.tp + body), "activations": activations(held_first),
                 "logits": logits}
    else:  # the last stage runs one micro-batch at a time in 1F1B (its chunks' share under VPP)
        first_stage = {**state(first / layout.tp + body), "activations": activations(held_first)}
        last_stage = {**state(last / layout.tp + body), "activations": activations(stage_layers),
                      "logits": logits}
        stage = max((first_stage, last_stage), key=lambda s: sum(s.values()))
    if overhead_bytes:
        stage["overhead"] = overhead_bytes
    return stage
