"""Rank-side code of the head-on-loss-positions tests: the head alone, under TP with and without SP,
on a loss mask that leaves some tensor-parallel rank's sequence slice without any loss position."""

from __future__ import annotations

import torch

SEQ, BATCH, WIDTH, VOCAB, REAL_VOCAB = 8, 2, 12, 32, 29


def _mask(pattern: str) -> torch.Tensor:
    """loss_mask [B, S]: "first_half" puts every loss position in TP rank 0's SP slice (S/2)."""
    mask = torch.zeros(BATCH, SEQ)
    if pattern == "first_half":
        mask[0, 1:3], mask[1, 0] = 1.0, 1.0
    elif pattern == "spread":
        mask[0, [1, 5, 6]], mask[1, [2, 7]] = 1.0, 1.0
    return mask  # "none": no loss position at all


def head_losses_and_grads(sequence_parallel: bool, pattern: str):
    """Both heads on the same hidden stream and weights; returns, per head, (per-token loss at the
    loss positions, d loss / d full hidden, d loss / d full head weight, rows the head's matmul saw
    on this rank)."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.transformer.transformer_config import TransformerConfig

    from genlip_megatron.model.lm_head import full_cross_entropy, loss_position_cross_entropy

    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    config = TransformerConfig(num_layers=1, hidden_size=WIDTH, num_attention_heads=2,
                               tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel,
                               use_cpu_initialization=True, gradient_accumulation_fusion=False)
    torch.manual_seed(3)
    full_hidden = torch.randn(SEQ, BATCH, WIDTH)
    full_weight = torch.randn(VOCAB, WIDTH) * 0.3
    labels = torch.randint(0, REAL_VOCAB, (BATCH, SEQ))
    mask = _mask(pattern)
    labels[mask == 0] = -100
    head = tensor_parallel.ColumnParallelLinear(WIDTH, VOCAB, config=config, init_method=lambda w: None,
                                                bias=False, gather_output=False)
    rows = VOCAB // tp
    seen = []
    head.register_forward_hook(lambda module, args, output: seen.append(output[0].shape[0]))
    out = {}
    for name in ("loss_positions", "full"):
        with torch.no_grad():
            head.weight.copy_(full_weight[rank * rows:(rank + 1) * rows])
        head.weight.grad = None
        hidden = full_hidden.chunk(tp)[rank] if sequence_parallel else full_hidden
        hidden = hidden.clone().requires_grad_(True)
        vocab = dict(real_vocab=REAL_VOCAB, padded_vocab=VOCAB)
        if name == "loss_positions":
            ce = loss_position_cross_entropy(hidden, labels, mask, head, sequence_parallel=sequence_parallel,
                                             **vocab)
        else:
            ce = full_cross_entropy(hidden, labels, head, **vocab)
        (ce * mask).sum().backward()
        grad_hidden = hidden.grad
        if sequence_parallel:
            grad_hidden = tensor_parallel.gather_from_sequence_parallel_region(
                grad_hidden, tensor_parallel_output_grad=False)
        elif tp > 1:  # each rank holds the partial (its vocabulary slice) input gradient
            torch.distributed.all_reduce(grad_hidden, group=ps.get_tensor_model_parallel_group())
        grad_weight = tensor_parallel.gather_from_tensor_model_parallel_region(head.weight.grad.t()).t()
        out[name] = ((ce * mask).detach(), grad_hidden.detach(), grad_weight.detach(), seen.pop())
    return out
