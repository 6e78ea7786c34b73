"""Kernels against their references on the same inputs: the fused (varlen) prefix-LM attention
and its context-parallel form against the dense mask, and the head on loss positions against the head on every position (plus
the time and memory the former saves). Both run on CPU too (smaller sizes, fp32, CPU kernels)."""

from __future__ import annotations

import math
import time

import torch

from gpu_checks.context import verdict


def stage1_spans(rows: int, seq_length: int, image_tokens: int, text_tokens: int) -> torch.Tensor:
    """Spans [K, 3] of `rows` packs of (image_tokens + text_tokens)-token samples, the last sample of
    each row cut to fit (a realistic mix of full and short samples)."""
    spans = []
    for r in range(rows):
        start = r * seq_length
        while start < (r + 1) * seq_length:
            end = min(start + image_tokens + text_tokens, (r + 1) * seq_length)
            text_start = min(start + image_tokens, end - 1)
            spans.append((start, text_start, end))
            start = end
    return torch.tensor(spans)


def _dense_reference(q, k, v, spans, rows: int, seq: int, scale: float) -> torch.Tensor:
    """fp32 SDPA with the dense prefix-LM mask, [T, h, d] in and out."""
    from genlip_megatron.hf.masks import prefix_lm_allowed

    segment = torch.full((rows * seq,), -1, dtype=torch.long, device=q.device)
    is_image = torch.zeros(rows * seq, dtype=torch.bool, device=q.device)
    for i, (start, text_start, end) in enumerate(spans.tolist()):
        segment[start:end], is_image[start:text_start] = i, True
    allowed = prefix_lm_allowed(segment.view(rows, seq), is_image.view(rows, seq))
    heads, dim = q.shape[1:]
    q, k, v = (t.float().view(rows, seq, heads, dim).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    return out.transpose(1, 2).reshape(rows * seq, heads, dim)


def varlen_vs_dense(ctx) -> dict:
    """The fused path (flash varlen on CUDA in bf16; the CPU block path in fp32) against the dense
    mask in fp32: outputs and input gradients on every real token."""
    from genlip_megatron.model.varlen_attention import prefix_lm_varlen_attention

    rows, seq, heads, dim = ctx.sizes((4, 2048, 16, 96), (2, 96, 2, 8))
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    tolerance = {"output": 2e-2, "grad": 5e-2} if ctx.cuda else {"output": 1e-5, "grad": 1e-5}
    spans = stage1_spans(rows, seq, *ctx.sizes((196, 84), (14, 9))).to(ctx.torch_device)
    g = torch.Generator(device=ctx.torch_device).manual_seed(0)
    q, k, v = (torch.randn(rows * seq, heads, dim, generator=g, device=ctx.torch_device).to(dtype)
               for _ in range(3))
    scale = 1.0 / math.sqrt(dim)
    grad_out = torch.randn(rows * seq, heads, dim, generator=g, device=ctx.torch_device).to(dtype)
    real = torch.zeros(rows * seq, dtype=torch.bool, device=ctx.torch_device)
    for start, _, end in spans.tolist():
        real[start:end] = True

    def run(fn, tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        out = fn(*leaves)
        out.backward(grad_out.to(out.dtype) * real[:, None, None])
        return out.detach().float(), [t.grad.float() for t in leaves]

    fused, fused_grads = run(lambda a, b, c: prefix_lm_varlen_attention(a, b, c, spans, scale), (q, k, v))
    dense, dense_grads = run(lambda a, b, c: _dense_reference(a, b, c, spans, rows, seq, scale),
                             (q.float(), k.float(), v.float()))
    out_diff = (fused - dense)[real].abs().max().item()
    grad_diff = max((a - b)[real].abs().max().item() for a, b in zip(fused_grads, dense_grads))
    return verdict(out_diff <= tolerance["output"] and grad_diff <= tolerance["grad"],
                   kernel="flash varlen_attn (bf16)" if ctx.cuda else "CPU block SDPA (fp32)",
                   shape={"rows": rows, "seq": seq, "heads": heads, "head_dim": dim, "samples": len(spans)},
                   max_abs_output_diff=out_diff, max_abs_grad_diff=grad_diff, tolerance=tolerance)


def context_vs_dense(ctx) -> dict:
    """Context-parallel attention (model/context_attention.py) of every CP rank's share of the
    queries, split as training splits a stage-2 pack (data/context_split.py, CP4 x 8 chunks), against
    the dense mask in fp32: outputs of every query, and the key and value gradients summed over the
    ranks (what the backward reduce-scatter hands their owners). On one GPU the ranks run one after
    another against the whole K/V (no NCCL): the check is of the kernel path (flash varlen segments,
    bf16; the CPU block path in fp32), not of the collectives, which tests/model/ covers over gloo."""
    from genlip_megatron.data.context_split import context_positions
    from genlip_megatron.model.context_attention import prefix_lm_context_attention

    cp, chunks = 4, 8
    seq, heads, dim = ctx.sizes((8192, 16, 96), (128, 2, 8))
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    tolerance = {"output": 2e-2, "grad": 5e-2} if ctx.cuda else {"output": 1e-5, "grad": 1e-5}
    spans = stage1_spans(1, seq, *ctx.sizes((1024, 100), (40, 9)))
    positions = context_positions(spans, 1, seq, cp, chunks).to(ctx.torch_device)
    spans = spans.to(ctx.torch_device)
    g = torch.Generator(device=ctx.torch_device).manual_seed(1)
    q, k, v, grad_out = (torch.randn(seq, heads, dim, generator=g, device=ctx.torch_device).to(dtype)
                         for _ in range(4))
    scale = 1.0 / math.sqrt(dim)
    real = torch.zeros(seq, dtype=torch.bool, device=ctx.torch_device)
    for start, _, end in spans.tolist():
        real[start:end] = True

    def split(a, b, c):
        out = torch.zeros_like(a)
        for queries in positions:  # rank by rank: its queries, every key
            out = out.index_put((queries,), prefix_lm_context_attention(a[queries], b, c, spans, queries, scale))
        return out

    leaves = [[t.detach().clone().requires_grad_(True) for t in ts] for ts in ((q, k, v), (q.float(), k.float(), v.float()))]
    outs = [split(*leaves[0]), _dense_reference(*leaves[1], spans, 1, seq, scale)]
    for out in outs:
        out.backward(grad_out.to(out.dtype) * real[:, None, None])
    out_diff = (outs[0].float() - outs[1])[real].abs().max().item()
    grad_diff = max((a.grad.float() - b.grad)[real].abs().max().item() for a, b in zip(*leaves))
    return verdict(out_diff <= tolerance["output"] and grad_diff <= tolerance["grad"],
                   kernel="flash varlen_attn segments (bf16)" if ctx.cuda else "CPU block SDPA (fp32)",
                   shape={"seq": seq, "heads": heads, "head_dim": dim, "samples": len(spans), "cp": cp,
                          "chunks_per_rank": chunks},
                   max_abs_output_diff=out_diff, max_abs_grad_diff=grad_diff, tolerance=tolerance)


def _normal_002(weight):
    return torch.nn.init.normal_(weight, std=0.02)


def _head(ctx, width: int, vocab: int, dtype):
    from megatron.core import tensor_parallel
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=width, num_attention_heads=1, params_dtype=dtype,
                               use_cpu_initialization=not ctx.cuda, gradient_accumulation_fusion=False)
    head = tensor_parallel.ColumnParallelLinear(width, vocab, config=config, init_method=_normal_002,
                                                bias=False, gather_output=False)
    return head.to(ctx.torch_device)


def _loss_layout(ctx, tokens: int, vocab: int):
    """labels [1, S] and loss_mask [1, S] of a stage-1 pack: loss on text tokens after a 2-token prompt."""
    spans = stage1_spans(1, tokens, *ctx.sizes((196, 84), (14, 9)))
    mask = torch.zeros(1, tokens)
    for _, text_start, end in spans.tolist():
        mask[0, text_start + 2:end - 1] = 1.0
    labels = torch.randint(0, vocab, (1, tokens)).where(mask > 0, -100)
    return labels.to(ctx.torch_device), mask.to(ctx.torch_device)


def head_vs_full(ctx) -> dict:
    """model/lm_head.py: the loss-position head equals the full head (fp32: loss and the gradients of
    hidden and weight), and what it saves (bf16: step time and, on CUDA, peak memory)."""
    from genlip_megatron.model.lm_head import full_cross_entropy, loss_position_cross_entropy

    tokens, width, vocab = ctx.sizes((8192, 1024, 151936), (256, 32, 1024))
    labels, mask = _loss_layout(ctx, tokens, vocab)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 for the equality half
    try:
        results = {}
        head = _head(ctx, width, vocab, torch.float32)
        hidden = torch.randn(tokens, 1, width, device=ctx.torch_device)
        for name, fn in (("loss_positions", lambda h: loss_position_cross_entropy(
                h, labels, mask, head, real_vocab=vocab, padded_vocab=vocab, sequence_parallel=False)),
                         ("full", lambda h: full_cross_entropy(h, labels, head, real_vocab=vocab,
                                                               padded_vocab=vocab))):
            head.weight.grad = None
            leaf = hidden.clone().requires_grad_(True)
            loss = (fn(leaf) * mask).sum() / mask.sum()
            loss.backward()
            results[name] = (loss.item(), leaf.grad, head.weight.grad.clone())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    (loss, d_hidden, d_weight), (ref_loss, ref_hidden, ref_weight) = results["loss_positions"], results["full"]
    loss_rel = abs(loss - ref_loss) / abs(ref_loss)
    grad_rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in ((d_hidden, ref_hidden),
                                                                              (d_weight, ref_weight)))
    tolerance = {"loss_relative": 1e-5, "grad_relative_to_max": 1e-4}
    speed = _head_cost(ctx, labels, mask, width, vocab)
    return verdict(loss_rel <= tolerance["loss_relative"] and grad_rel <= tolerance["grad_relative_to_max"],
                   tokens=tokens, loss_positions=int(mask.sum()), vocab=vocab, loss_relative_diff=loss_rel,
                   grad_relative_diff=grad_rel, tolerance=tolerance, **speed)


def _head_cost(ctx, labels, mask, width: int, vocab: int) -> dict:
    """Median fwd+bwd seconds (and CUDA peak bytes above the inputs) of both heads in bf16."""
    from genlip_megatron.model.lm_head import full_cross_entropy, loss_position_cross_entropy

    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    head = _head(ctx, width, vocab, dtype)
    hidden = torch.randn(labels.shape[1], 1, width, device=ctx.torch_device, dtype=dtype, requires_grad=True)
    fns = {"loss_positions": lambda: loss_position_cross_entropy(hidden, labels, mask, head, real_vocab=vocab,
                                                                 padded_vocab=vocab, sequence_parallel=False),
           "full": lambda: full_cross_entropy(hidden, labels, head, real_vocab=vocab, padded_vocab=vocab)}
    out = {}
    for name, fn in fns.items():
        times = []
        for _ in range(4):
            hidden.grad, head.weight.grad = None, None
            if ctx.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            ((fn() * mask).sum()).backward()
            if ctx.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[f"{name}_ms"] = 1e3 * sorted(times[1:])[len(times[1:]) // 2]
        if ctx.cuda:
            out[f"{name}_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    out["time_ratio"] = out["loss_positions_ms"] / out["full_ms"]
    if ctx.cuda:
        out["peak_ratio"] = out["loss_positions_peak_gib"] / out["full_peak_gib"]
    out["cost_dtype"] = str(dtype).replace("torch.", "")
    return out
