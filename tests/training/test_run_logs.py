"""A training log a person can read: a start banner that states the run, per-interval lines with
samples seen, peak memory and ETA, and library warnings once per run (rank 0 only), not per rank."""

from __future__ import annotations

import re
from collections import Counter

from tiny_runs import RankProcesses, read_metrics

from genlip_megatron.config.load import load_config
from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.convert.hf_config import genlip_hf_config as hf_config_from_model_config
from genlip_megatron.hf.modeling_genlip import GenLIPModel

STEPS = 6


def test_two_rank_log_has_banner_progress_and_each_warning_once(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"checkpoint.dir={run_dir}", f"schedule.train_iters={STEPS}", "logging.log_interval=2",
                 "checkpoint.save_interval=1000"]
    procs = RankProcesses(2, overrides, str(tmp_path / "logs"))
    assert procs.wait() == [0, 0], procs.tail()
    rank0, rank1 = procs.log(0), procs.log(1)

    # banner: model size (an independent count: the plain-torch model + the vocabulary padding rows of
    # embedding and head), layout, tokens per step, data, run dir
    from tiny_runs import TINY

    cfg = load_config("tiny_cpu", TINY)
    reference = sum(p.numel() for p in GenLIPModel(hf_config_from_model_config(cfg.model)).parameters())
    padding = (padded_vocab_size(cfg.model, 1) - cfg.model.vocab_size) * cfg.model.hidden_size * 2
    assert f"genlip run: genlip 2 layers x 32 wide, {reference + padding:,} parameters | cpu fp32 | " \
           "world 2 = TP1 x PP1 x CP1 x DP2" in rank0
    assert "step: 4 sequences x 32 tokens = 128 tokens (micro-batch 1, 2 micro-batches per rank and step)" in rank0
    assert "data: synthetic batches | eval: none" in rank0 and f"run dir: {run_dir} (" in rank0
    assert "start: fresh" in rank0

    # progress lines: samples seen = the running total of metrics.jsonl, an ETA, a peak memory
    lines = [line for line in rank0.splitlines() if re.search(r"step \d+/6 \|", line)]
    assert len(lines) == STEPS // 2
    metrics = read_metrics(str(run_dir))
    running = 0
    totals = {}
    for m in metrics:
        running += m["samples"]
        totals[m["step"]] = running
        assert m["consumed_samples"] == running and m["peak_memory_bytes"] > 0
    for line in lines:
        step = int(re.search(r"step (\d+)/", line).group(1))
        assert f"| {totals[step]:,} samples seen |" in line
        assert re.search(r"\| peak mem \d+\.\d\d GiB \| ETA \d", line)
    assert lines[-1].endswith("ETA 0s")

    # warnings: none from rank 1, and no text twice on rank 0
    assert "Warning" not in rank1, rank1[-2000:]
    warned = Counter(line for line in rank0.splitlines() if "Warning:" in line)
    assert warned and max(warned.values()) == 1, warned.most_common(3)
