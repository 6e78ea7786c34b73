"""The step boundary: how one optimizer step's global batch splits over data-parallel ranks and
micro-batches. The one place this arithmetic lives; the trainer, both batch sources (synthetic and
the shard loader's rank schedule), config validation and the layout planner ask here.

    G = train.global_batch_size packed sequences per step, D data-parallel ranks,
    b = train.micro_batch_size sequences per micro-batch:
    every rank processes G / D sequences per step, as M = G / (D b) micro-batches;
    sequence j of the step (0 <= j < G) lives on rank j % D, in micro-batch (j // D) // b, row (j // D) % b.

The strided assignment spreads the step's last, emptier packed sequences over the ranks. Plain
integers; no torch, no process groups.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepSplit:
    global_batch_size: int
    micro_batch_size: int
    dp_size: int

    @staticmethod
    def problem(global_batch_size: int, micro_batch_size: int, dp_size: int | None) -> str | None:
        """Why G does not split into whole micro-batches on every rank, as one line; None if it does.
        dp_size None: the data-parallel size is not known yet (only micro-batches are checked)."""
        if global_batch_size % (micro_batch_size * (dp_size or 1)) == 0:
            return None
        if dp_size is None:
            return (f"train.global_batch_size={global_batch_size} is not divisible by "
                    f"train.micro_batch_size={micro_batch_size}")
        return (f"train.global_batch_size={global_batch_size} is not divisible by train.micro_batch_size x "
                f"data-parallel size = {micro_batch_size} x {dp_size}")

    def __post_init__(self):
        problem = self.problem(self.global_batch_size, self.micro_batch_size, self.dp_size)
        if problem:
            raise ValueError(problem)

    @classmethod
    def of(cls, cfg, dp_size: int) -> StepSplit:
        """The split of a Config's training batch over `dp_size` data-parallel ranks."""
        return cls(cfg.train.global_batch_size, cfg.train.micro_batch_size, dp_size)

    @classmethod
    def one_micro_batch_per_rank(cls, cfg, dp_size: int) -> StepSplit:
        """The split in which every rank takes its G / D sequences in ONE micro-batch (what a CPU run
        on D ranks wants: no per-micro-batch overhead); ValueError, one line, if D does not divide G."""
        global_batch = cfg.train.global_batch_size
        if dp_size < 1 or global_batch % dp_size:
            raise ValueError(f"{dp_size} data-parallel ranks do not divide train.global_batch_size={global_batch}")
        return cls(global_batch, global_batch // dp_size, dp_size)

    @property
    def sequences_per_rank(self) -> int:
        return self.global_batch_size // self.dp_size

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step on every data-parallel rank."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def rows(self, dp_rank: int, micro: int) -> list[int]:
        """The step's sequences (indices in [0, G)) that micro-batch `micro` of rank `dp_rank` holds."""
        first = micro * self.micro_batch_size
        return [dp_rank + self.dp_size * (first + i) for i in range(self.micro_batch_size)]
