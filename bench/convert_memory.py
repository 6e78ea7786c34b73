"""Peak RSS of `genlip convert to-hf` on a synthetic checkpoint, against its largest tensor.

    python bench/convert_memory.py                 # ~2.6 GB fp32 checkpoint (L/16 width, Qwen vocab)
    python bench/convert_memory.py --layers 8 --vocab 8192 --width 256 --ffn 1024   # small

Expect: peak RSS - baseline < 2 x largest tensor (+ a few tens of MB), far below the checkpoint size.
`baseline` is the same process up to the point where conversion starts (interpreter, torch,
transformers, the checkpoint's metadata): the fixed overhead. Each measurement runs in a fresh
process (VmHWM is a high-water mark). Writes bench/results/convert_memory-<time>.json with the
host, commit and settings next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_synthetic_checkpoint(out: str, *, layers: int, width: int, ffn: int, vocab: int, heads: int = 16) -> None:
    """A randomly initialised GenLIP saved as a training checkpoint would be (world of one)."""
    import torch

    from genlip_megatron.config.schema import padded_vocab_size
    from genlip_megatron.convert.from_hf import _save_single_process, run_config_from_hf
    from genlip_megatron.convert.mcore_names import hf_to_mcore
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    half = width // heads // 2
    config = GenLIPConfig(hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
                          num_attention_heads=heads, vocab_size=vocab, drop_path_rate=0.0,
                          mrope_section=[half - 2 * (half // 3), half // 3, half // 3])
    cfg = run_config_from_hf(config, None, 1, 1, None)
    cfg.train.synthetic_data = True
    torch.manual_seed(0)
    hf = GenLIPModel(config)
    padded = padded_vocab_size(cfg.model, 1)
    full = hf_to_mcore(hf.state_dict(), num_layers=layers, num_heads=heads, padded_vocab=padded)
    del hf
    _save_single_process(full, cfg, padded, out, "synthetic")


def _peak_rss_bytes() -> int:
    """This process's RSS high-water mark (Linux VmHWM). NOTE: not ru_maxrss, which survives exec and
    so reports the PARENT's peak for a child started from a big process."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _child(mode: str, checkpoint: str, out: str) -> None:
    """Runs in a fresh process: print the peak RSS (bytes) after `mode`."""
    # The baseline imports everything the conversion imports: only the conversion's data differs.
    import genlip_megatron.convert.hf_folder  # noqa: F401
    import genlip_megatron.hf.modeling_genlip  # noqa: F401
    from genlip_megatron.checkpoint.reader import CheckpointReader
    from genlip_megatron.convert.to_hf import export_to_hf

    reader = CheckpointReader(checkpoint)
    result = {"largest_tensor_bytes": reader.largest_tensor_bytes(),
              "checkpoint_model_bytes": sum(reader.shape(n).numel() * reader.dtype(n).itemsize for n in reader)}
    del reader
    if mode == "convert":
        start = time.perf_counter()
        export_to_hf(checkpoint, out, without_tokenizer=True)
        result["seconds"] = time.perf_counter() - start
    result["peak_rss_bytes"] = _peak_rss_bytes()
    print(json.dumps(result))


def measure(checkpoint: str, out: str) -> dict:
    """{"baseline", "convert"} peak RSS, each in its own process, plus tensor sizes."""
    results = {}
    for mode in ("baseline", "convert"):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, checkpoint, out],
                              capture_output=True, text=True, cwd=REPO, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"baseline_peak_rss_bytes": results["baseline"]["peak_rss_bytes"],
            "convert_peak_rss_bytes": results["convert"]["peak_rss_bytes"],
            "largest_tensor_bytes": results["convert"]["largest_tensor_bytes"],
            "checkpoint_model_bytes": results["convert"]["checkpoint_model_bytes"],
            "convert_seconds": results["convert"]["seconds"]}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2752)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder (deleted)")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="convert_memory_")
    try:
        checkpoint = os.path.join(work, "ckpt")
        if not os.path.isdir(checkpoint):
            write_synthetic_checkpoint(checkpoint, layers=args.layers, width=args.width, ffn=args.ffn,
                                       vocab=args.vocab)
        numbers = measure(checkpoint, os.path.join(work, "hf"))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    over = numbers["convert_peak_rss_bytes"] - numbers["baseline_peak_rss_bytes"]
    numbers["over_baseline_in_largest_tensors"] = over / numbers["largest_tensor_bytes"]
    record = {"bench": "convert_memory", "commit": _commit(), "host": platform.node(),
              "cpus": os.cpu_count(), "settings": vars(args), **numbers}
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    path = os.path.join(REPO, "bench", "results", f"convert_memory-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    gib = 1024 ** 3
    print(f"checkpoint {numbers['checkpoint_model_bytes'] / gib:.2f} GiB, largest tensor "
          f"{numbers['largest_tensor_bytes'] / gib:.3f} GiB, baseline {numbers['baseline_peak_rss_bytes'] / gib:.2f} GiB, "
          f"peak {numbers['convert_peak_rss_bytes'] / gib:.2f} GiB (+{over / gib:.3f} GiB = "
          f"{numbers['over_baseline_in_largest_tensors']:.2f} x largest) in {numbers['convert_seconds']:.1f} s -> {path}")


if __name__ == "__main__":
    main()
