"""A step with a non-finite loss is skipped without touching the model, and K in a row stop the run."""

import dataclasses
import math

from multiproc import run_on_ranks
from tiny_runs import train_in_pool

from genlip_megatron.training.batches import SyntheticBatches
from genlip_megatron.training.faults import EXIT_NONFINITE

K = 3


class PoisonedBatches(SyntheticBatches):
    """SyntheticBatches whose image pixels are NaN on the given (1-based) steps."""

    POISONED = frozenset({2, 4, 5, 6})

    def next(self):
        step = self.consumed_sequences // self.global_batch + 1
        batch = super().next()
        if step in self.POISONED:
            batch = dataclasses.replace(batch, image_patches=batch.image_patches * float("nan"))
        return batch


class WithoutStepTwo(SyntheticBatches):
    """SyntheticBatches that never hands out step 2's batch (reference for a skipped step 2)."""

    def next(self):
        if self.consumed_sequences == self.global_batch and self._micro == 0:
            for _ in range(self.micro_batches_per_step):
                super().next()
        return super().next()


def test_nan_step_is_skipped_exactly_and_k_in_a_row_stop_the_run():
    overrides = ["schedule.train_iters=8", f"train.max_consecutive_nan_steps={K}"]
    poisoned = run_on_ranks(2, train_in_pool, overrides, PoisonedBatches)[0]
    reference = run_on_ranks(2, train_in_pool, ["schedule.train_iters=8"], WithoutStepTwo)[0]

    losses = poisoned["losses"]
    assert poisoned["exit_code"] == EXIT_NONFINITE
    assert poisoned["iteration"] == 6, "must stop right after the K-th consecutive bad step (4, 5, 6)"
    assert poisoned["skipped_steps"] == 4
    assert "3 consecutive steps (4..6)" in poisoned["message"] and "max_consecutive_nan_steps" in poisoned["message"]
    assert [step for step, loss in losses.items() if math.isnan(loss)] == [2, 4, 5, 6]
    # Skipped step 2 changed nothing (weights, Adam state, lr schedule): step 3 of the poisoned run
    # equals step 2 of a run that never saw that batch, bitwise.
    assert losses[1] == reference["losses"][1]
    assert losses[3] == reference["losses"][2]
