"""Measure the peak memory of a few CPU training steps of one config (run as a child process).

    python tests/launch/measure_peak.py CONFIG [key=value ...]   -> one JSON line on stdout

Peak = VmHWM (this process's resident high-water mark) at the end minus the resident size just
before the model is built (imports, the interpreter and megatron's globals are not what the
planner estimates). NOTE: not ru_maxrss: Linux folds the forking parent's RSS into the child's
ru_maxrss across exec, so under a large pytest parent it reported the parent's size. Run in a fresh process so
that nothing else has raised the high-water mark. Also reports the model's real parameter count.
"""

from __future__ import annotations

import json
import os
import sys


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main(argv: list[str]) -> None:
    import torch
    import torch.distributed as dist

    from genlip_megatron.config.load import load_config
    from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed
    from genlip_megatron.training import trainer

    torch.set_num_threads(2)
    cfg = load_config(argv[0], argv[1:])
    init_distributed(0, 1, "127.0.0.1", 29000 + os.getpid() % 1000, device="cpu")
    counted = {}
    build = trainer.build_training_modules

    def counting_build(c):  # wrap to read the parameter count of what the trainer really built
        modules = build(c)
        counted["params"] = sum(p.numel() for chunk in modules.model for p in chunk.parameters())
        return modules

    trainer.build_training_modules = counting_build
    baseline = _rss_bytes()
    outcome = trainer.run_training(cfg)
    peak = _high_water_bytes()
    destroy_distributed()
    if dist.is_initialized():
        dist.destroy_process_group()
    print(json.dumps({"peak_bytes": peak - baseline, "params": counted.get("params"),
                      "steps": outcome.iteration}))


if __name__ == "__main__":
    main(sys.argv[1:])
