"""The lines a run prints before its first step: what is being trained, where, on what, how fast
it must go - so a person reading a log (or a SLURM .out) knows the run without its config.

    genlip run: genlip 4 layers x 128 wide, 916,736 parameters | cpu fp32 | world 2 = TP1 x PP1 x CP1 x DP2
      step: 8 sequences x 512 tokens = 4,096 tokens (micro-batch 2, 2 micro-batches per rank and step)
      schedule: 1,500 steps, lr 1.0e-03 (cosine, 10 warmup), min 1.0e-06 | start: fresh
      data: /data/fmnist/manifest.json (20,000 samples, 2 shards) | eval: none
      run dir: /runs/tiny (checkpoint every 500 steps, keep 3)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate


def parameter_count(model_chunks: list) -> int:
    """Parameters of the whole model (every pipeline stage, every tensor-parallel slice, counted once;
    vocabulary padding included). Collective over the model-parallel group: every rank calls it."""
    local = sum(p.numel() for chunk in model_chunks for p in chunk.parameters()
                if param_is_not_tensor_parallel_duplicate(p))
    total = torch.tensor([local], dtype=torch.float64)
    group = parallel_state.get_model_parallel_group()
    if dist.get_backend(group) == "nccl":
        total = total.cuda()
    dist.all_reduce(total, group=group)
    return int(total.item())


def _dataset(ref: str) -> str:
    if not ref:
        return "none"
    from genlip_megatron.data.dataset_ref import manifest_summary

    try:
        info = manifest_summary(ref)
    except (OSError, ValueError):
        return ref
    return f"{ref} ({info['samples']:,} samples, {info['shards']} shards)"


def banner_lines(cfg, params: int, world: int, micro_batches_per_rank: int, start: str) -> list[str]:
    """The banner (see the module docstring). start: "fresh" or where the run resumed from."""
    m, p, t, d, s, o = cfg.model, cfg.parallel, cfg.train, cfg.data, cfg.schedule, cfg.optimizer
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    vpp = f" (VPP {p.virtual_pipeline_model_parallel_size})" if p.virtual_pipeline_model_parallel_size else ""
    warmup = round(s.warmup_fraction * s.train_iters)
    data = "synthetic batches" if t.synthetic_data else _dataset(d.manifest)
    run_dir = (f"{cfg.checkpoint.dir} (checkpoint every {cfg.checkpoint.save_interval} steps, keep "
               f"{cfg.checkpoint.keep_last})" if cfg.checkpoint.dir
               else "none: checkpoint.dir is empty, so this run saves nothing and resumes nothing")
    evaluation = (f"{_dataset(d.eval_manifest)}, every {t.eval_interval} steps over {t.eval_iters} batches"
                  if d.eval_manifest and t.eval_iters > 0 else "none")
    return [
        f"genlip run: {m.objective} {m.num_layers} layers x {m.hidden_size} wide, {params:,} parameters"
        f" | {t.device} {t.precision} | world {world} = TP{tp} x PP{pp}{vpp} x CP{cp} x DP{world // (tp * pp * cp)}",
        f"  step: {t.global_batch_size:,} sequences x {d.seq_length:,} tokens = "
        f"{t.global_batch_size * d.seq_length:,} tokens (micro-batch {t.micro_batch_size}, "
        f"{micro_batches_per_rank} micro-batches per rank and step)",
        f"  schedule: {s.train_iters:,} steps, lr {o.lr:.1e} ({s.decay_style}, {warmup} warmup), min {o.min_lr:.1e}"
        f" | start: {start}",
        f"  data: {data} | eval: {evaluation}",
        f"  run dir: {run_dir}",
    ]
