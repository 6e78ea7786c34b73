"""AIMv2's logged FLOPs: the FLOPs an AIMv2 training step writes to metrics.jsonl equal a hand count for
its encoder + decoder shape over the very samples and prefixes of that step, at DP1 and DP2; the attention
pairs of the formula equal the allowed pairs of the model's own masks; MFU divides those FLOPs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))  # the trainer tests' tiny run

from multiproc import run_on_ranks
from tiny_runs import layout, tiny_config, train_in_pool

from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.hf.aimv2_reference import causal_sample_allowed, encoder_prefix_allowed
from genlip_megatron.model.aimv2_prefix import random_image_prefix
from genlip_megatron.objectives.aimv2.flops import count_tokens
from genlip_megatron.training.batches import SyntheticBatches
from genlip_megatron.training.metrics import throughput

AIMV2 = ["model.objective=aimv2", "model.attention=dense", "model.decoder_hidden_size=24", "model.decoder_num_layers=2",
         "model.decoder_num_attention_heads=4", "model.decoder_ffn_hidden_size=48",
         "model.decoder_mrope_section=[1,1,1]", "model.aimv2_image_size=8", "model.layer_norm_eps=1e-5",
         "schedule.train_iters=2"]


def _samples(batch, prefix):
    """(image patches n, text tokens t, prefix patches p, loss positions l) of every sample, read
    position by position."""
    out = []
    for r in range(batch.tokens.shape[0]):
        seg, img, pre = batch.segment_ids[r].tolist(), batch.is_image[r].tolist(), prefix[r].tolist()
        loss = batch.loss_mask[r].tolist()
        for k in sorted(set(seg) - {-1}):
            here = [i for i, s in enumerate(seg) if s == k]
            n = sum(img[i] for i in here)
            out.append((n, len(here) - n, sum(pre[i] for i in here), sum(loss[i] != 0 for i in here)))
    return out


def hand_count(cfg, step: int, dp_size: int) -> int:
    """3 x forward FLOPs of step `step` (1-based) written out per sample, on the step's global batch."""
    m = cfg.model
    w, f, le = m.hidden_size, m.ffn_hidden_size, m.num_layers
    hd, fd, ld = m.decoder_hidden_size, m.decoder_ffn_hidden_size, m.decoder_num_layers
    d, v = 3 * m.patch_size ** 2, 64  # vocabulary 64, a multiple of 8 already: no padding
    total = 0
    for rank in range(dp_size):
        source = SyntheticBatches(cfg, rank, dp_size)
        split = StepSplit.of(cfg, dp_size)
        batches = [[source.next() for _ in range(split.micro_batches)] for _ in range(step)][-1]
        for micro, batch in enumerate(batches):
            prefix = random_image_prefix(batch.segment_ids, batch.is_image, cfg.data.seed, step - 1,
                                         split.rows(rank, micro))
            for n, t, p, loss in _samples(batch, prefix):
                encoder_pairs = p * p + sum(i + 1 for i in range(p, n))
                tokens = n + t
                forward = (2 * n * d * w
                           + le * (2 * n * 4 * w * w + 2 * n * 3 * w * f + 4 * w * encoder_pairs)
                           + 2 * n * w * hd
                           + ld * (2 * tokens * 4 * hd * hd + 2 * tokens * 3 * hd * fd
                                   + 4 * hd * tokens * (tokens + 1) // 2)
                           + 2 * tokens * hd * d  # pixel head: every position
                           + 2 * loss * hd * v)  # text head: the loss positions
                total += 3 * forward
    return total


def test_logged_aimv2_flops_equal_the_hand_count_at_dp1_and_dp2(tmp_path):
    cfg = tiny_config(AIMV2)
    for dp in (1, 2):
        run_dir = tmp_path / f"dp{dp}"
        [result] = run_on_ranks(dp, train_in_pool, AIMV2 + layout() + [f"checkpoint.dir={run_dir}"])[:1]
        assert result["exit_code"] == 0
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record in records:
            assert record["flops"] == hand_count(cfg, record["step"], dp), (dp, record["step"])
            # the logged throughput is those FLOPs over the step time, per device
            want = throughput(1, 1, record["flops"], record["seconds_per_step"], dp, None)["tflops_per_device"]
            assert abs(record["tflops_per_device"] - want) <= 1e-9 * want


def test_attention_pairs_are_the_allowed_pairs_of_the_models_masks():
    cfg = tiny_config(AIMV2 + ["train.micro_batch_size=2"])
    batch = SyntheticBatches(cfg, 0, 1).next()
    prefix = random_image_prefix(batch.segment_ids, batch.is_image, 5, 3)
    counts = count_tokens(batch.spans, prefix, batch.loss_mask)
    encoder = encoder_prefix_allowed(batch.segment_ids, batch.is_image, prefix)[:, 0]
    decoder = causal_sample_allowed(batch.segment_ids)[:, 0]
    image_queries = batch.is_image[:, :, None].expand_as(encoder)
    real_queries = (batch.segment_ids >= 0)[:, :, None].expand_as(decoder)
    assert counts.encoder_pairs == int((encoder & image_queries).sum())
    assert counts.decoder_pairs == int((decoder & real_queries).sum())
    assert counts.image_tokens == int(batch.is_image.sum()) and counts.tokens == int(real_queries[:, :, 0].sum())
    assert counts.loss_tokens == int(batch.loss_mask.sum())
    assert bool(prefix.any()) and bool((batch.is_image & ~prefix).any())  # both kinds of patch present
