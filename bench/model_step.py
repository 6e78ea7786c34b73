"""Forward+backward time of a small GenLIP on CPU, in three comparisons run in one invocation:

1. megatron-core model (TP1, local spec, dense attention) against the plain-torch reference, same
   weights, same packed batch (issue #2 target: megatron-core / plain-torch <= 1.15);
2. the same with the fused (varlen) attention;
3. at a 32k vocabulary (dense attention, the faster one on CPU): the head on loss positions only (what training runs, model/lm_head.py)
   against the head on every position (the old path), both megatron-core: step time and peak
   memory (each peak measured in a fresh child process, VmHWM rise over the step).

    .venv/bin/python bench/model_step.py [--repeats 10] [--threads 2]

Setting: width 256, 6 layers, a pack of 4 x (196 image + 64 text) tokens, of which 62 per sample
carry loss (24% of the pack). Times are medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report  # noqa: E402
from packed_batch import packed_batch  # noqa: E402

WIDTH, LAYERS, HEADS, FFN, VOCAB, PATCH = 256, 6, 4, 688, 1024, 16
LARGE_VOCAB = 32768


def build(attention: str, vocab: int = VOCAB):
    from genlip_megatron.config.schema import Config
    from genlip_megatron.convert.mcore_names import hf_to_mcore, shard_for_model
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel as Reference
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    cfg = Config()
    m = cfg.model
    m.hidden_size, m.num_layers, m.num_attention_heads, m.ffn_hidden_size = WIDTH, LAYERS, HEADS, FFN
    m.vocab_size, m.patch_size, m.mrope_section, m.drop_path_rate = vocab, PATCH, [8, 12, 12], 0.0
    m.attention = attention
    cfg.train.device, cfg.train.precision = "cpu", "fp32"
    ref = Reference(GenLIPConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, patch_size=PATCH, vocab_size=vocab,
                                 mrope_section=[8, 12, 12], drop_path_rate=0.0))
    ours = GenLIPModel(genlip_transformer_config(cfg), m, vocab)
    full = hf_to_mcore(ref.state_dict(), num_layers=LAYERS, num_heads=HEADS, padded_vocab=vocab)
    ours.load_state_dict(shard_for_model(full, ours, 0, 1), strict=False)
    return ours, ref


def batch(vocab: int) -> dict:
    return packed_batch([[(14, 14, 64)]] * 4, seq_length=260, patch_dim=3 * PATCH * PATCH, vocab=vocab)


def mcore_step(model, b: dict, head: str):
    """One forward+backward of the megatron-core model with the given head."""
    inputs = (b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"])
    loss_mask = b["loss_mask"] if head == "loss_positions" else None

    def step():
        model.zero_grad(set_to_none=True)
        ((model(*inputs, labels=b["labels"], loss_mask=loss_mask) * b["loss_mask"]).sum()).backward()

    return step


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of two step functions, alternated so machine noise hits both alike."""
    first(), second()  # warm-up
    times = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("VmHWM:")).split()[1]) * 1024


def peak_child(head: str, threads: int) -> None:
    """(In a fresh process) peak resident memory of two steps above the resident size before them."""
    torch.set_num_threads(threads)
    from genlip_megatron.runtime.distributed import init_distributed

    init_distributed(0, 1, "127.0.0.1", 29000 + os.getpid() % 1000, device="cpu")
    model, _ = build("dense", LARGE_VOCAB)
    b = batch(LARGE_VOCAB)
    step = mcore_step(model, b, head)
    model.zero_grad(set_to_none=False)  # gradient buffers exist before the baseline is taken
    base = _rss_bytes()
    step()
    step()
    print(json.dumps({"peak_bytes": _high_water_bytes() - base}))


def measure_peak(head: str, threads: int) -> float:
    # Return large frees to the OS at once so that the high-water mark follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run([sys.executable, __file__, "--peak-of", head, "--threads", str(threads)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-of", choices=("loss_positions", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        return peak_child(args.peak_of, args.threads)
    torch.set_num_threads(args.threads)
    from genlip_megatron.runtime.distributed import init_distributed

    init_distributed(0, 1, "127.0.0.1", 29631, device="cpu")
    rows = []
    b = batch(VOCAB)
    for attention in ("dense", "fused"):
        ours, ref = build(attention)

        def torch_step():
            ref.zero_grad(set_to_none=True)
            ref.loss_packed(b)[0].backward()

        ms, base_ms = interleaved_medians(mcore_step(ours, b, "full"), torch_step, args.repeats)
        rows.append({"case": f"{attention} attention, vocab {VOCAB}", "ours": "mcore, full head",
                     "baseline": "plain torch", "ms": 1e3 * ms, "baseline_ms": 1e3 * base_ms,
                     "time_ratio": ms / base_ms, "peak_mib": "-", "baseline_peak_mib": "-",
                     "peak_ratio": "-"})
    ours, _ = build("dense", LARGE_VOCAB)
    big = batch(LARGE_VOCAB)
    ms, base_ms = interleaved_medians(mcore_step(ours, big, "loss_positions"), mcore_step(ours, big, "full"),
                                      args.repeats)
    peak, base_peak = measure_peak("loss_positions", args.threads), measure_peak("full", args.threads)
    rows.append({"case": f"dense attention, vocab {LARGE_VOCAB}", "ours": "mcore, loss-position head",
                 "baseline": "mcore, full head", "ms": 1e3 * ms, "baseline_ms": 1e3 * base_ms,
                 "time_ratio": ms / base_ms, "peak_mib": peak, "baseline_peak_mib": base_peak,
                 "peak_ratio": peak / base_peak})
    loss_share = float(big["loss_mask"].mean())
    report("model_step", rows, {"width": WIDTH, "layers": LAYERS, "heads": HEADS,
                                "pack": "4 x (196 image + 64 text)", "loss_position_share": loss_share,
                                "repeats": args.repeats, "threads": args.threads, "dtype": "fp32",
                                "load_average": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
