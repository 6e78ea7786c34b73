"""Rank-side code of the AIMv2 tests: one AIMv2 step under any TP/SP/PP layout, and TP1 probes.

Every rank builds its stage of the megatron-core AIMv2 from the SAME plain-torch reference weights
(genlip_megatron/hf/aimv2_reference.py), runs megatron-core's forward-backward schedule with real
DDP and finalize_model_grads over two micro-batches, and returns the loss and every parameter
gradient re-assembled to full tensors under their global names.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch
from packed_batch import packed_batch

ENC, ENC_HEADS, ENC_LAYERS, ENC_FFN = 48, 4, 2, 80
DEC, DEC_HEADS, DEC_LAYERS, DEC_FFN = 64, 4, 2, 96
VOCAB, PATCH, IMAGE = 256, 2, 10  # learned position table: 5 x 5 patches
SEQ, MICRO_BATCH, MICRO_BATCHES, PREFIX_SEED = 48, 2, 2, 7
ROWS = [  # per micro-batch: sequences of samples (grid_h, grid_w, n_text)
    [[(3, 4, 9), (2, 3, 8), (2, 2, 6)], [(4, 4, 12), (3, 3, 7)]],
    [[(2, 5, 14), (4, 3, 10)], [(3, 3, 5), (2, 2, 9), (1, 3, 4)]],
]


def tiny_config(tp=1, pp=1, sp=False, position_embedding="learned", recompute="none"):
    from genlip_megatron.config.schema import Config

    c = Config()
    m = c.model
    m.objective = "aimv2"
    m.hidden_size, m.num_attention_heads, m.num_layers, m.ffn_hidden_size = ENC, ENC_HEADS, ENC_LAYERS, ENC_FFN
    m.decoder_hidden_size, m.decoder_num_attention_heads = DEC, DEC_HEADS
    m.decoder_num_layers, m.decoder_ffn_hidden_size = DEC_LAYERS, DEC_FFN
    m.decoder_mrope_section = [2, 3, 3]  # sums to (64 / 4) / 2
    m.vocab_size, m.patch_size, m.layer_norm_eps = VOCAB, PATCH, 1e-5
    m.aimv2_image_size, m.aimv2_position_embedding = IMAGE, position_embedding
    m.drop_path_rate, m.recompute = 0.0, recompute
    c.parallel.tensor_model_parallel_size, c.parallel.pipeline_model_parallel_size = tp, pp
    c.parallel.sequence_parallel = sp
    c.train.device, c.train.precision = "cpu", "fp32"
    return c


def reference_model(position_embedding="learned"):
    """The plain-torch AIMv2 with seeded, non-trivial weights (same on every rank)."""
    from genlip_megatron.convert.aimv2_names import reference_config
    from genlip_megatron.hf.aimv2_reference import AIMv2Reference

    torch.manual_seed(0)
    model = AIMv2Reference(reference_config(tiny_config(position_embedding=position_embedding).model))
    with torch.no_grad():  # move norms off 1 and give every weight a visible scale
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def micro_batches():
    """docs/batch.md batches plus `image_prefix`, drawn from (PREFIX_SEED, micro-batch index)."""
    from genlip_megatron.model.aimv2_prefix import random_image_prefix

    out = []
    for i, rows in enumerate(ROWS):
        b = packed_batch(rows, seq_length=SEQ, patch_dim=3 * PATCH * PATCH, vocab=VOCAB, seed=i)
        b["image_prefix"] = random_image_prefix(b["segment_ids"], b["is_image"], PREFIX_SEED, i)
        out.append(b)
    return out


def _mcore(state: dict, padded=VOCAB):
    from genlip_megatron.convert.aimv2_names import reference_to_mcore

    return reference_to_mcore(state, num_layers=ENC_LAYERS, num_heads=ENC_HEADS,
                              decoder_num_layers=DEC_LAYERS, decoder_num_heads=DEC_HEADS,
                              padded_vocab=padded)


def reference_loss_and_grads(text_weight=1.0, pixel_weight=0.4):
    """Single process: the weighted sum of the two global means; grads in mcore names."""
    model = reference_model()
    terms = [model.loss_terms(b, b["image_prefix"]) for b in micro_batches()]
    text_sum, text_count, pixel_sum, pixel_count = (sum(t[i] for t in terms) for i in range(4))
    loss = text_weight * text_sum / text_count + pixel_weight * pixel_sum / pixel_count
    loss.backward()
    return loss.item(), _mcore({n: p.grad for n, p in model.named_parameters()})


def build_stage(cfg, padded=VOCAB):
    from megatron.core import parallel_state as ps

    from genlip_megatron.model.aimv2 import AIMv2Model
    from genlip_megatron.model.aimv2_specs import aimv2_transformer_configs

    stage, encoder, decoder = aimv2_transformer_configs(cfg)
    model = AIMv2Model(stage, encoder, decoder, cfg.model, padded,
                       pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())
    return model, stage


def _load(model, state: dict) -> None:
    from megatron.core import parallel_state as ps

    from genlip_megatron.convert.mcore_names import shard_for_model

    result = model.load_state_dict(shard_for_model(
        state, model, ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()),
        strict=False)
    assert not [k for k in result.missing_keys if not k.endswith("_extra_state")], result


def _forward_step(scale, head, data_iterator, model):
    """head "loss_positions" (what training runs) or "full" (the text head on every position)."""
    from genlip_megatron.model.aimv2_loss import aimv2_loss_func

    b = next(data_iterator)
    out = model(b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"],
                labels=b["labels"], image_prefix=b["image_prefix"],
                loss_mask=b["loss_mask"] if head == "loss_positions" else None)
    return out, partial(aimv2_loss_func, b["loss_mask"], scale, 1.0, 0.4)


def parallel_loss_and_grads(layout: dict, head: str = "loss_positions"):
    """Run on every rank (harness sets TP/PP). Returns (loss or None, {global name: grad})."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from genlip_megatron.convert.mcore_names import gather_tp_slices, global_name
    from genlip_megatron.model.aimv2_loss import local_loss_counts, pixel_scale

    model, tc = build_stage(tiny_config(**layout))
    _load(model, _mcore(reference_model().state_dict()))
    ddp = DistributedDataParallel(tc, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False), model)
    tc.finalize_model_grads_func = finalize_model_grads
    batches = micro_batches()
    scale = pixel_scale(local_loss_counts([SimpleNamespace(**b) for b in batches],
                                          [b["image_prefix"] for b in batches]))  # DP = 1: local = global
    reports = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, scale, head), data_iterator=iter(batches), model=[ddp],
        num_microbatches=MICRO_BATCHES, seq_length=SEQ, micro_batch_size=MICRO_BATCH,
        forward_only=False)
    loss = None
    if reports:
        total = torch.stack([r["loss_sum_and_count"] for r in reports]).sum(0)
        loss = (total[0] / total[1]).item()
    grads = {global_name(n, model): gather_tp_slices(n, p.main_grad, p, ps.get_tensor_model_parallel_group()).clone()
             for n, p in model.named_parameters()}
    return loss, (grads if ps.get_tensor_model_parallel_rank() == 0 else {})


def tp1_model(position_embedding="learned"):
    """TP1 megatron-core AIMv2 holding the reference weights, and the reference itself (eval)."""
    model, _ = build_stage(tiny_config(position_embedding=position_embedding))
    reference = reference_model(position_embedding)
    _load(model, _mcore(reference.state_dict()))
    return model.eval(), reference.eval()


def tp1_outputs():
    """Ours vs reference on micro-batch 0 with its random prefix: (features, pixels, logits) pairs,
    per-position (CE, MSE), and the batch."""
    model, reference = tp1_model()
    b = micro_batches()[0]
    args = (b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"])
    with torch.no_grad():
        features, c = model.encode(*args[1:], b["image_prefix"])
        logits, pixels = model(*args, image_prefix=b["image_prefix"])
        per_position = model(*args, labels=b["labels"], image_prefix=b["image_prefix"])
        ref = reference.forward_packed(*args, b["image_prefix"])
    ours_features = torch.zeros_like(ref["features"])
    ours_features[b["is_image"]] = features.transpose(0, 1)[c.valid]
    return {"features": (ours_features, ref["features"]), "pixels": (pixels.transpose(0, 1), ref["pixels"]),
            "logits": (logits.transpose(0, 1), ref["logits"]), "per_position": per_position,
            "batch": b}


def tp1_encoder_features(image_prefix_of_row0, perturb_patch: int | None):
    """Encoder features [Si, W] of row 0 of micro-batch 0 under the given prefix, optionally with
    compact patch `perturb_patch` of that row changed."""
    model, _ = tp1_model()
    b = micro_batches()[0]
    prefix = torch.zeros_like(b["is_image"])
    prefix[0] = image_prefix_of_row0
    patches = b["image_patches"].clone()
    if perturb_patch is not None:
        patches[perturb_patch] += 1.0  # row 0's patches come first in image_patches
    with torch.no_grad():
        features, c = model.encode(patches, b["is_image"], b["position_ids"], b["segment_ids"], prefix)
    return features[:, 0], c.segment_ids[0]


def tp1_export(tmp_dir: str, position_embedding: str, grid_h: int, grid_w: int):
    """Export our encoder; load it with transformers; compare on two images of grid_h x grid_w
    patches. Returns (ours [2, n, W], transformers [2, n, W])."""
    from transformers import Aimv2VisionModel

    from genlip_megatron.convert.aimv2_names import export_vision_model
    from genlip_megatron.hf.modeling_genlip import patchify

    model, _ = tp1_model(position_embedding)
    export_vision_model(model.state_dict(), tiny_config(position_embedding=position_embedding).model,
                        tmp_dir)
    loaded = Aimv2VisionModel.from_pretrained(tmp_dir).eval()
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, grid_h * PATCH, grid_w * PATCH, generator=g) * 2 - 1
    batch = packed_batch([[(grid_h, grid_w, 3)], [(grid_h, grid_w, 5)]], seq_length=SEQ,
                         patch_dim=3 * PATCH * PATCH, vocab=VOCAB)
    patches = patchify(pixels, PATCH).reshape(-1, 3 * PATCH * PATCH)
    with torch.no_grad():
        ours, valid = model.features(patches, batch["is_image"], batch["position_ids"], batch["segment_ids"])
        theirs = loaded(pixel_values=pixels).last_hidden_state
    return ours[valid].reshape(2, grid_h * grid_w, -1), theirs
