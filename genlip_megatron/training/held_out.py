"""Held-out caption loss during training: every train.eval_interval steps (and after the last step),
the objective's loss over the first train.eval_iters global batches of data.eval_manifest.

The samples are fixed (data/run_loader.py: the eval dataset's order from position 0, no random crops),
the same on every run and under any parallel layout, and reading them touches neither the training
stream nor its checkpointed state: the eval loader is its own PackedLoader, the model runs in eval
mode (no dropout or drop-path, so no RNG draw) under megatron's forward-only schedule, and nothing
here is saved. The loss is sum / count over every loss position of every sequence, as in training:
`genlip eval --checkpoint RUN --test EVAL_DATASET` computes the same number offline (eval/held_out.py).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func

from genlip_megatron.training.step import is_batch_reporter, is_loss_reporter


class HeldOutLoss:
    """Evaluates `modules` on the held-out batches of this data-parallel rank (see the module docstring)."""

    def __init__(self, cfg, dp_rank: int, dp_size: int, micro_batches_per_step: int):
        from genlip_megatron.data.run_loader import shard_loader

        self.interval, self.iters, self.total = cfg.train.eval_interval, cfg.train.eval_iters, cfg.schedule.train_iters
        self.loader = shard_loader(cfg, cfg.data.eval_manifest, dp_rank, dp_size, augment=False)
        self.start = self.loader.state_dict()  # position 0: every evaluation reads the same samples
        self.micro_batches = micro_batches_per_step

    def due(self, iteration: int) -> bool:
        return iteration % self.interval == 0 or iteration == self.total

    @torch.no_grad()
    def evaluate(self, modules, device: torch.device) -> dict:
        """{"loss", "tokens", "samples", "seconds"} over the held-out batches; every rank calls it."""
        start = time.perf_counter()
        self.loader.load_state_dict(self.start)
        stream = iter(self.loader)
        stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, loss positions, samples
        objective = modules.objective
        for chunk in modules.model:
            chunk.eval()
        try:
            for _ in range(self.iters):
                micro_batches = [next(stream) for _ in range(self.micro_batches)]
                # step 0: the same inputs at every evaluation (AIMv2 draws its prefixes from the step)
                inputs = objective.prepare_step(modules.cfg, micro_batches, split=modules.split, step=0)
                iterators = [iter(inputs) for _ in modules.model]
                reports = get_forward_backward_func()(
                    forward_step_func=lambda iterator, chunk: objective.forward_step(next(iterator), chunk),
                    data_iterator=iterators if len(modules.model) > 1 else iterators[0],
                    model=modules.model, num_microbatches=len(micro_batches),
                    seq_length=micro_batches[0].seq_length, micro_batch_size=micro_batches[0].micro_batch_size,
                    forward_only=True)
                if is_loss_reporter():  # under CP every CP rank holds the CE of its share of positions
                    for report in reports:
                        stats[:2] += report["loss_sum_and_count"].to(device, torch.float64)
                if is_batch_reporter():
                    stats[2] += sum(batch.num_samples for batch in micro_batches)
        finally:
            stream.close()  # frees the eval pipeline's decoder workers until the next evaluation
            for chunk in modules.model:
                chunk.train()
        dist.all_reduce(stats)
        loss_sum, tokens, samples = stats.tolist()
        return {"loss": loss_sum / tokens if tokens else float("nan"), "tokens": int(tokens),
                "samples": int(samples), "seconds": time.perf_counter() - start}
