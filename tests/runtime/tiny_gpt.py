"""A tiny megatron-core GPTModel (local spec) and one training step, run inside pool workers.

The reference is the same model built at TP1/PP1 and stepped with a plain `loss.backward()`: no
DDP, no schedule, no collective, so it is independent of everything the parallel runs exercise.
Parallel runs load the reference weights, sliced by each parameter's own `partition_dim`.
"""

from __future__ import annotations

import re

import torch

VOCAB, SEQ, BATCH, HIDDEN, LAYERS = 64, 8, 2, 32, 2


def tiny_config(tp: int = 1, pp: int = 1, sequence_parallel: bool = False, **overrides):
    from megatron.core.transformer import TransformerConfig

    settings = {
        "num_layers": LAYERS,
        "hidden_size": HIDDEN,
        "num_attention_heads": 4,
        "ffn_hidden_size": 2 * HIDDEN,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "sequence_parallel": sequence_parallel,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "params_dtype": torch.float32,
        "pipeline_dtype": torch.float32,
        "gradient_accumulation_fusion": False,  # needs apex
        "batch_p2p_comm": False,  # see the notes: batched p2p mis-pairs sends at PP2+VPP
        "bias_dropout_fusion": False,
        "masked_softmax_fusion": False,
    }
    settings.update(overrides)
    return TransformerConfig(**settings)


def build_model(config):
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return GPTModel(
        config,
        get_gpt_layer_local_spec(),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
    )


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(VOCAB, (BATCH, SEQ + 1), generator=generator)
    return {
        "tokens": tokens[:, :-1],
        "labels": tokens[:, 1:],
        "position_ids": torch.arange(SEQ).expand(BATCH, SEQ),
    }


def reference_step(seed: int = 0) -> dict:
    """Loss, weights and grads of one fp32 step at TP1/PP1 with plain autograd (run at tp=pp=1)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config())
    batch = tiny_batch(seed)
    loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).mean()
    loss.backward()
    return {
        "loss": loss.item(),
        "weights": {name: p.detach().clone() for name, p in model.named_parameters()},
        "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
    }


def _global_name(name: str, layer_offset: int) -> str:
    """`decoder.layers.<local>.` on a later pipeline stage is layer <local + offset> of the model."""
    return re.sub(
        r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", name
    )


def _my_slice(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return full.chunk(tp, dim=param.partition_dim)[parallel_state.get_tensor_model_parallel_rank()]


def named_slices(model, full: dict[str, torch.Tensor]):
    """(local name, local param, this rank's slice of the full reference tensor) per parameter."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    offset = get_transformer_layer_offset(model.config)
    for name, param in model.named_parameters():
        yield name, param, _my_slice(param, full[_global_name(name, offset)])


def load_reference_weights(model, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for _, param, value in named_slices(model, weights):
            param.copy_(value)


def wrap_ddp(model, use_distributed_optimizer: bool = False):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return DistributedDataParallel(model.config, ddp_config, model)


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])

    def loss_func(per_token_loss):
        loss = per_token_loss.mean()
        return loss, {"loss": loss.detach()}

    return output, loss_func


def parallel_step(ddp_model, seed: int = 0) -> float | None:
    """Forward/backward through megatron's schedule + finalize_model_grads; the loss on the last stage."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ddp_model.zero_grad_buffer()
    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter([tiny_batch(seed)]),
        model=[ddp_model],
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=BATCH,
        forward_only=False,
    )
    finalize_model_grads([ddp_model])
    return losses[0]["loss"].item() if losses else None


def max_grad_error(ddp_model, reference_grads: dict[str, torch.Tensor]) -> float:
    """Largest |grad - reference grad| over this rank's parameters (grads live in main_grad)."""
    errors = [
        (param.main_grad - expected).abs().max().item()
        for _, param, expected in named_slices(ddp_model.module, reference_grads)
    ]
    return max(errors)


LR, CLIP_GRAD = 1e-2, 0.5  # the tiny model's grad norm is ~3: clipping is exercised


def build_optimizer(ddp_model):
    """megatron's DistributedOptimizer over torch AdamW (no TE/apex), fp32, no weight decay."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam",
        lr=LR,
        weight_decay=0.0,  # megatron and torch disagree on which params decay; keep them equal
        clip_grad=CLIP_GRAD,
        use_distributed_optimizer=True,
    )
    return get_megatron_optimizer(config, [ddp_model])
