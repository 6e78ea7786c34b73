"""Forward+backward time of a small GenLIP on CPU: megatron-core model (TP1, local spec) against
the plain-torch reference, same weights, same packed batch, same run.

    .venv/bin/python bench/model_step.py [--repeats 10] [--threads 2]

Setting (issue #2): width 256, 6 layers, a pack of 4 x (196 image + 64 text) tokens. Target:
megatron-core / plain-torch <= 1.15 (median of repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report  # noqa: E402
from packed_batch import packed_batch  # noqa: E402

WIDTH, LAYERS, HEADS, FFN, VOCAB, PATCH = 256, 6, 4, 688, 1024, 16


def build(attention: str):
    from genlip_megatron.config.schema import Config
    from genlip_megatron.convert.mcore_names import hf_to_mcore, shard_for_model
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel as Reference
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    cfg = Config()
    m = cfg.model
    m.hidden_size, m.num_layers, m.num_attention_heads, m.ffn_hidden_size = WIDTH, LAYERS, HEADS, FFN
    m.vocab_size, m.patch_size, m.mrope_section, m.drop_path_rate = VOCAB, PATCH, [8, 12, 12], 0.0
    m.attention = attention
    cfg.train.device, cfg.train.precision = "cpu", "fp32"
    ref = Reference(GenLIPConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, patch_size=PATCH, vocab_size=VOCAB,
                                 mrope_section=[8, 12, 12], drop_path_rate=0.0))
    ours = GenLIPModel(genlip_transformer_config(cfg), m, VOCAB)
    full = hf_to_mcore(ref.state_dict(), num_layers=LAYERS, num_heads=HEADS, padded_vocab=VOCAB)
    ours.load_state_dict(shard_for_model(full, ours, 0, 1), strict=False)
    return ours, ref


def time_step(step, repeats: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from genlip_megatron.runtime.distributed import init_distributed

    init_distributed(0, 1, "127.0.0.1", 29631, device="cpu")
    b = packed_batch([[(14, 14, 64)]] * 4, seq_length=260, patch_dim=3 * PATCH * PATCH,
                     vocab=VOCAB)
    inputs = (b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"])
    rows = []
    for attention in ("dense", "fused"):
        ours, ref = build(attention)

        def mcore_step():
            ours.zero_grad(set_to_none=True)
            ((ours(*inputs, labels=b["labels"]) * b["loss_mask"]).sum()).backward()

        def torch_step():
            ref.zero_grad(set_to_none=True)
            ref.loss_packed(b)[0].backward()

        # Interleave the two so machine noise hits both alike.
        t_m, t_r = [], []
        for _ in range(args.repeats):
            t_m += time_step(mcore_step, 1)
            t_r += time_step(torch_step, 1)
        med_m, med_r = statistics.median(t_m), statistics.median(t_r)
        rows.append({"attention": attention, "mcore_ms": 1e3 * med_m, "torch_ms": 1e3 * med_r,
                     "ratio": med_m / med_r})
    report("model_step", rows, {"width": WIDTH, "layers": LAYERS, "heads": HEADS,
                                "pack": "4 x (196 image + 64 text)", "repeats": args.repeats,
                                "threads": args.threads, "dtype": "fp32"})


if __name__ == "__main__":
    main()
