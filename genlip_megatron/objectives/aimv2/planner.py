"""AIMv2's planner model: parameters, per-GPU memory, FLOPs and communication volume of a layout
(`genlip plan aimv2_l14 ...`). Shared storage rules: objectives/planning.py.

Shape of the work: the encoder (Le layers, width W) runs on the image patches only (the compact
image stream), the decoder (Ld layers, width Hd) on every token; PP=2 puts the encoder (with the
patch and token embeddings and the projection) on stage 0 and the decoder with both heads on stage 1.
With n image and t text tokens per sample, a sequence of S tokens holds S / (n + t) samples and
S n / (n + t) image tokens.

Activations autograd saves per layer and token, in units of the layer's width H or SwiGLU width F,
as torch.autograd.graph.saved_tensors_hooks counts them on our AIMv2 layers (local spec, CPU, fp32,
2026-11; tests/launch/test_memory_estimate.py checks the whole estimate against a measured peak):
    replicated unless sequence parallel: both RMSNorms' input, output and the next linear's input -> 6H
    split by TP: encoder attention 4H (the fused qkv, the SDPA output),
                 decoder attention 6.25H (the same plus the rotated q and k; RoPE is one compiled
                 kernel that keeps only its angles, head_dim per token),
                 SwiGLU 3F (bias + SwiGLU is one compiled kernel: fc1's [gate ; up] output 2F, fc2's F)
AIMv2 runs dense attention: torch's fused SDPA keeps no probabilities but saves the mask as a float
[S, S] per row and layer (Si x Si in the encoder, Si = image tokens of the row), 4 bytes a pair.
The heads keep fp32 logits at the text head's backward peak (8 bytes per [row, V/t] element; the
text head runs on the loss positions only, every text token counted as one: an upper bound) and
the pixel predictions of every position. Imports neither torch nor megatron.
"""

from __future__ import annotations

from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.objectives.planning import (
    LOGIT_BYTES,
    element_bytes,
    image_tokens,
    in_flight,
    training_state,
)

REPLICATED_H, ENCODER_ATTENTION_H, DECODER_ATTENTION_H, MLP_F = 6.0, 4.0, 6.25, 3.0
MASK_BYTES = 4  # per (query, key) pair of a row: the float mask SDPA saves


def _patch_dim(m) -> int:
    return m.num_channels * m.patch_size ** 2


def stage_params(cfg, tp: int = 1) -> tuple[int, int]:
    """(encoder part, decoder part) parameters: the two pipeline stages of PP=2."""
    m = cfg.model
    w, f, hd, fd = m.hidden_size, m.ffn_hidden_size, m.decoder_hidden_size, m.decoder_ffn_hidden_size
    v = padded_vocab_size(m, tp)
    grid = m.aimv2_image_size // m.patch_size
    table = grid * grid * w if m.aimv2_position_embedding == "learned" else 0
    embed = _patch_dim(m) * w + w + w + table  # patch Linear + bias, RMSNorm, position table
    encoder = embed + m.num_layers * (4 * w * w + 3 * w * f + 2 * w) + w + w * hd + v * hd
    decoder = m.decoder_num_layers * (4 * hd * hd + 3 * hd * fd + 2 * hd) + hd + hd * _patch_dim(m) + v * hd
    return encoder, decoder


def total_params(cfg, tp: int = 1) -> int:
    return sum(stage_params(cfg, tp))


def sample_shape(cfg, text_tokens: float) -> tuple[int, float, float]:
    """(image tokens per sample, samples per sequence, image tokens per sequence)."""
    n = image_tokens(cfg)
    samples = cfg.data.seq_length / (n + text_tokens)
    return n, samples, samples * n


def _layer_bytes(cfg, layout, tokens: float, width: int, ffn: int, attention_h: float, row: float) -> float:
    """Saved activations of one layer over `tokens` tokens of one micro-batch on one rank, whose
    dense mask spans `row` x `row` pairs per sequence."""
    t, e = layout.tp, element_bytes(cfg)
    replicated = REPLICATED_H * width / (t if layout.sequence_parallel else 1)
    block = tokens * (replicated + (attention_h * width + MLP_F * ffn) / t) * e
    return block + layout.micro_batch_size * row * row * MASK_BYTES


def memory_breakdown(cfg, layout, micro_batches: int, text_tokens: float) -> dict[str, float]:
    """Bytes on the most loaded rank, by component (the larger stage under PP=2)."""
    m, e = cfg.model, element_bytes(cfg)
    mbs, cp = layout.micro_batch_size, layout.cp
    _, _, image = sample_shape(cfg, text_tokens)
    seq, img = cfg.data.seq_length * mbs / cp, image * mbs / cp
    encoder_layer = _layer_bytes(cfg, layout, img, m.hidden_size, m.ffn_hidden_size, ENCODER_ATTENTION_H, image)
    decoder_layer = _layer_bytes(cfg, layout, seq, m.decoder_hidden_size, m.decoder_ffn_hidden_size,
                                 DECODER_ATTENTION_H, cfg.data.seq_length)
    split = layout.tp if layout.sequence_parallel else 1
    if layout.recompute == "full":  # each layer's input, plus one layer being recomputed
        encoder_act = m.num_layers * img * m.hidden_size / split * e + encoder_layer
        decoder_act = m.decoder_num_layers * seq * m.decoder_hidden_size / split * e + decoder_layer
    else:
        encoder_act, decoder_act = m.num_layers * encoder_layer, m.decoder_num_layers * decoder_layer
    text_rows = seq * text_tokens / (image_tokens(cfg) + text_tokens)
    heads = text_rows * padded_vocab_size(m, layout.tp) / layout.tp * LOGIT_BYTES + seq * _patch_dim(m) * 4
    enc_params, dec_params = stage_params(cfg, layout.tp)
    held = in_flight(layout, micro_batches)
    if layout.pp == 1:
        return {**training_state(cfg, layout, (enc_params + dec_params) / layout.tp),
                "activations": held * (encoder_act + decoder_act), "logits": heads}
    encoder_stage = {**training_state(cfg, layout, enc_params / layout.tp), "activations": held * encoder_act}
    decoder_stage = {**training_state(cfg, layout, dec_params / layout.tp), "activations": decoder_act,
                     "logits": heads}
    return max((encoder_stage, decoder_stage), key=lambda s: sum(s.values()))


def expected_encoder_pairs(n: int) -> float:
    """Mean allowed pairs of an n-patch image's encoder mask over the prefix draw p ~ U[1, n - 1]
    (objectives/aimv2/flops.py has the per-p count)."""
    if n < 2:
        return float(n)
    ps = range(1, n)
    return sum(p * p + (n * (n + 1) - p * (p + 1)) / 2 for p in ps) / (n - 1)


def forward_flops_per_part(cfg, text_tokens: float) -> tuple[float, float]:
    """(encoder stage, decoder stage) model FLOPs of one forward over one sequence, mean samples:
    patch embedding + encoder + projection; decoder + heads."""
    m = cfg.model
    w, f, hd, fd = m.hidden_size, m.ffn_hidden_size, m.decoder_hidden_size, m.decoder_ffn_hidden_size
    n, samples, image = sample_shape(cfg, text_tokens)
    tokens, total = cfg.data.seq_length, n + text_tokens
    encoder = 2 * image * _patch_dim(m) * w + m.num_layers * (
        2 * image * (4 * w * w + 3 * w * f) + 4 * w * samples * expected_encoder_pairs(n))
    decoder = m.decoder_num_layers * (2 * tokens * (4 * hd * hd + 3 * hd * fd)
                                      + 4 * hd * samples * total * (total + 1) / 2)
    # the text head runs on the loss positions only (every text token counted: an upper bound)
    heads = 2 * tokens * hd * _patch_dim(m) + 2 * samples * text_tokens * hd * padded_vocab_size(m, 1)
    return encoder + 2 * image * w * hd, decoder + heads


def step_flops(cfg, text_tokens: float) -> float:
    """Model FLOPs of one optimizer step (3 forwards) over the global batch, mean samples."""
    return 3 * sum(forward_flops_per_part(cfg, text_tokens)) * cfg.train.global_batch_size


def stage_imbalance(cfg, layout, text_tokens: float) -> float:
    """PP=2 runs the encoder and the decoder on different GPUs: the slower one sets the pace."""
    if layout.pp == 1:
        return 1.0
    parts = forward_flops_per_part(cfg, text_tokens)
    return layout.pp * max(parts) / sum(parts)


def traffic(cfg, layout, text_tokens: float) -> tuple[float, float]:
    """(tokens x width summed over the layers of the busiest stage, per micro-batch; the decoder
    stream [S, B, Hd] sent from the encoder stage to the decoder stage)."""
    m = cfg.model
    _, _, image = sample_shape(cfg, text_tokens)
    mbs = layout.micro_batch_size / layout.cp
    encoder = m.num_layers * image * mbs * m.hidden_size
    decoder = m.decoder_num_layers * cfg.data.seq_length * mbs * m.decoder_hidden_size
    sent = cfg.data.seq_length * mbs * m.decoder_hidden_size
    return (encoder + decoder if layout.pp == 1 else max(encoder, decoder)), sent
