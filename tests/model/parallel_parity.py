"""Rank-side code of the parallel parity tests: one GenLIP step under any TP/SP/PP/VPP layout.

Every rank builds its stage(s) of the megatron-core model from the SAME plain-torch reference
weights (genlip_megatron/hf), runs megatron-core's forward-backward schedule with real DDP and
finalize_model_grads over two micro-batches, and returns the loss and its parameter gradients
re-assembled to full tensors under their global names. The test compares them with the
single-process reference model's loss and autograd gradients.
"""

from __future__ import annotations

from functools import partial

import torch
from packed_batch import packed_batch

HIDDEN, HEADS, LAYERS, FFN, TEXT_DIM, VOCAB, PATCH = 64, 4, 4, 96, 48, 256, 4
SEQ, MICRO_BATCH, MICRO_BATCHES = 48, 2, 2
ROWS = [  # per micro-batch: sequences of samples (grid_h, grid_w, n_text)
    [[(3, 4, 9), (2, 3, 8), (2, 2, 6)], [(4, 4, 12), (3, 3, 7)]],
    [[(2, 5, 14), (4, 3, 10)], [(3, 3, 5), (2, 2, 9), (1, 3, 4)]],
]


def tiny_config(tp=1, pp=1, vpp=None, sp=False, attention="dense", recompute="none", cp=1, cp_chunks=1):
    from genlip_megatron.config.schema import Config

    c = Config()
    m = c.model
    m.hidden_size, m.num_attention_heads, m.num_layers, m.ffn_hidden_size = HIDDEN, HEADS, LAYERS, FFN
    m.text_embed_dim, m.vocab_size, m.patch_size, m.mrope_section = TEXT_DIM, VOCAB, PATCH, [2, 3, 3]
    m.drop_path_rate, m.attention, m.recompute = 0.0, attention, recompute
    p = c.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size = tp, pp
    p.virtual_pipeline_model_parallel_size, p.sequence_parallel = vpp, sp
    p.context_parallel_size, p.context_parallel_chunks = cp, cp_chunks
    c.train.device, c.train.precision = "cpu", "fp32"
    return c


def reference_model():
    """The plain-torch GenLIP with seeded, non-trivial weights (same on every rank)."""
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    config = GenLIPConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, patch_size=PATCH, mrope_section=[2, 3, 3],
                          text_embed_dim=TEXT_DIM, vocab_size=VOCAB, drop_path_rate=0.0)
    torch.manual_seed(0)
    model = GenLIPModel(config)
    with torch.no_grad():  # move LayerNorm / LayerScale / biases off their init values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def micro_batches():
    return [packed_batch(rows, seq_length=SEQ, patch_dim=3 * PATCH * PATCH, vocab=VOCAB, seed=i)
            for i, rows in enumerate(ROWS)]


def reference_loss_and_grads():
    """Single process: loss = sum CE / loss tokens over both micro-batches; grads in mcore names."""
    from genlip_megatron.convert.mcore_names import hf_to_mcore

    model = reference_model()
    sums, counts = zip(*(model.loss_packed(b) for b in micro_batches()))
    loss = sum(sums) / sum(counts)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.item(), hf_to_mcore(grads, num_layers=LAYERS, num_heads=HEADS, padded_vocab=VOCAB)


def _loss_func(loss_mask, per_token_loss):
    total = (per_token_loss * loss_mask).sum()
    count = loss_mask.sum().to(torch.int)
    return total, count, {"lm loss": torch.stack([total.detach(), count.float()])}


def _forward_step(head, data_iterator, model):
    """head "loss_positions" (what training runs) or "full" (the head on every position). A
    ContextShard (context parallelism) carries this rank's positions and the pack's spans."""
    b = next(data_iterator)
    if not isinstance(b, dict):
        b = {**vars(b), "context": b.positions}
    out = model(b["tokens"], b["image_patches"], b["is_image"], b["position_ids"],
                b["segment_ids"], labels=b["labels"],
                loss_mask=b["loss_mask"] if head == "loss_positions" else None,
                spans=b.get("spans"), context=b.get("context"))
    return out, partial(_loss_func, b["loss_mask"])


def _this_ranks_batches(cfg) -> list:
    """The micro-batches of this data-parallel rank (micro-batch m on rank m % DP), each split for
    this context-parallel rank when CP > 1."""
    from megatron.core import parallel_state as ps

    from genlip_megatron.data.context_split import split_batch
    from genlip_megatron.data.packed_batch import PackedBatch
    from genlip_megatron.model.varlen_attention import prefix_lm_spans

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    batches = micro_batches()[dp_rank::dp]
    cp = cfg.parallel.context_parallel_size
    if cp == 1:
        return batches
    packed = [PackedBatch(**b, spans=prefix_lm_spans(b["segment_ids"], b["is_image"])) for b in batches]
    shards = [split_batch(b, cp, cfg.parallel.context_parallel_chunks, ps.get_context_parallel_rank())
              for b in packed]
    assert all(s.tokens.shape == (MICRO_BATCH, SEQ // cp) for s in shards)  # really split
    return shards


def parallel_loss_and_grads(layout: dict, head: str = "loss_positions"):
    """Run on every rank (harness sets TP/PP/VPP). Returns (loss or None, {global name: grad})."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from genlip_megatron.convert.mcore_names import (
        gather_tp_slices,
        global_name,
        hf_to_mcore,
        shard_for_model,
    )
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    cfg = tiny_config(**layout)
    tc = genlip_transformer_config(cfg)
    full = hf_to_mcore(reference_model().state_dict(), num_layers=LAYERS, num_heads=HEADS,
                       padded_vocab=VOCAB)
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    tp_rank, tp = ps.get_tensor_model_parallel_rank(), cfg.parallel.tensor_model_parallel_size
    chunks = []
    for v in range(vpp or 1):
        stage = v if vpp else None
        model = GenLIPModel(tc, cfg.model, VOCAB,
                            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                            vp_stage=stage)
        missing = model.load_state_dict(shard_for_model(full, model, tp_rank, tp), strict=False)
        assert not [k for k in missing.missing_keys if not k.endswith("_extra_state")], missing
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                            use_distributed_optimizer=False)
        chunks.append(DistributedDataParallel(tc, ddp, model, disable_bucketing=v > 0))
    tc.finalize_model_grads_func = finalize_model_grads
    batches = _this_ranks_batches(cfg)
    losses = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, head), data_iterator=[iter(batches) for _ in chunks],
        model=chunks, num_microbatches=len(batches), seq_length=SEQ,
        micro_batch_size=MICRO_BATCH, forward_only=False)
    loss = None
    if losses:  # last stage: sum and count over this rank's micro-batches, then over DP x CP
        reported = torch.stack([x["lm loss"] for x in losses]).sum(0)
        torch.distributed.all_reduce(reported, group=ps.get_data_parallel_group(with_context_parallel=True))
        loss = (reported[0] / reported[1]).item()
    grads = {}
    for chunk in chunks:
        for name, p in chunk.module.named_parameters():
            full_grad = gather_tp_slices(name, p.main_grad, p, ps.get_tensor_model_parallel_group())
            grads[global_name(name, chunk.module)] = full_grad.clone()
    return loss, (grads if tp_rank == 0 else {})


def single_stage_model(attention="dense", vocab_size=VOCAB):
    """TP1 megatron-core GenLIP holding the reference weights, and the reference itself."""
    from genlip_megatron.config.schema import padded_vocab_size
    from genlip_megatron.convert.mcore_names import hf_to_mcore, shard_for_model
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    cfg = tiny_config(attention=attention)
    cfg.model.vocab_size = vocab_size
    padded = padded_vocab_size(cfg.model, 1)
    reference = reference_model()
    model = GenLIPModel(genlip_transformer_config(cfg), cfg.model, padded).eval()
    full = hf_to_mcore(reference.state_dict(), num_layers=LAYERS, num_heads=HEADS,
                       padded_vocab=padded)
    model.load_state_dict(shard_for_model(full, model, 0, 1), strict=False)
    return model, reference.eval()


def tp1_logits(attention):
    """Logits [B, S, V] of the megatron-core model and of the reference on one packed batch."""
    model, reference = single_stage_model(attention)
    b = micro_batches()[0]
    args = (b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"])
    with torch.no_grad():
        return model(*args).transpose(0, 1), reference.forward_packed(*args)["logits"], b


def tp1_parameter_counts():
    model, reference = single_stage_model()
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in reference.parameters()))


def tp1_perturbation_effects(attention):
    """Change one image patch and one text token of sample 1 of row 0; report which positions'
    logits moved. Returns (base batch, moved-by-image [S], moved-by-text [S])."""
    model, _ = single_stage_model(attention)
    b = micro_batches()[0]

    def logits(tokens, patches):
        with torch.no_grad():
            return model(tokens, patches, b["is_image"], b["position_ids"], b["segment_ids"])[:, 0]

    base = logits(b["tokens"], b["image_patches"])
    seg, img = b["segment_ids"][0], b["is_image"][0]
    first_image_of_sample1 = int(((seg == 1) & img).nonzero()[0])
    patches = b["image_patches"].clone()
    # image_patches follow sequence order and row 0 comes first: count the image tokens before.
    patches[int(img[:first_image_of_sample1].sum())] += 1.0
    moved_by_image = (logits(b["tokens"], patches) - base).abs().amax(-1) > 1e-6
    text_pos = int(((seg == 1) & ~img).nonzero()[3])
    tokens = b["tokens"].clone()
    tokens[0, text_pos] = (tokens[0, text_pos] % (VOCAB - 1)) + 1
    moved_by_text = (logits(tokens, b["image_patches"]) - base).abs().amax(-1) > 1e-6
    return b, first_image_of_sample1, text_pos, moved_by_image, moved_by_text


def tp1_bf16_loss():
    """Mean caption loss of the bf16 model (megatron-core's Float16Module wrapper) and of the fp32
    reference on the same batch."""
    from megatron.core.transformer.module import Float16Module

    from genlip_megatron.config.schema import padded_vocab_size
    from genlip_megatron.convert.mcore_names import hf_to_mcore, shard_for_model
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    cfg = tiny_config()
    cfg.train.precision = "bf16"
    tc = genlip_transformer_config(cfg)
    reference = reference_model()
    model = GenLIPModel(tc, cfg.model, padded_vocab_size(cfg.model, 1))
    full = hf_to_mcore(reference.state_dict(), num_layers=LAYERS, num_heads=HEADS,
                       padded_vocab=VOCAB)
    model.load_state_dict(shard_for_model(full, model, 0, 1), strict=False)
    model = Float16Module(tc, model).eval()
    b = micro_batches()[0]
    with torch.no_grad():
        per_token = model(b["tokens"], b["image_patches"], b["is_image"], b["position_ids"],
                          b["segment_ids"], labels=b["labels"])
        ref_sum, count = reference.loss_packed(b)
    dtypes = {p.dtype for p in model.parameters()}
    return (per_token.float() * b["loss_mask"]).sum().item() / count.item(), \
        (ref_sum / count).item(), dtypes


def tp1_padded_vocab_logits(real_vocab):
    """Logits of a model whose tokenizer has `real_vocab` < padded vocabulary, and the reference's."""
    model, reference = single_stage_model(vocab_size=real_vocab)
    b = micro_batches()[0]
    args = (b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"])
    with torch.no_grad():
        return model(*args).transpose(0, 1), reference.forward_packed(*args)["logits"], b
