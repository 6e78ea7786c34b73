"""Fault handling: exit codes, stop signals, the non-finite-step guard and the hung-step watchdog.

Exit codes of `genlip train` (docs/training.md):
    0   EXIT_DONE        schedule.train_iters reached
    1                    an error (traceback on stderr)
    75  EXIT_REQUEUE     stopped on SIGTERM / SIGUSR1 after saving a checkpoint: requeue the job
                         (75 = EX_TEMPFAIL, "temporary failure, try again"); it resumes from `latest`
    76  EXIT_NONFINITE   train.max_consecutive_nan_steps steps in a row had a non-finite loss or grad norm
    77  EXIT_HUNG        a step exceeded train.step_timeout_s (stack of every thread on stderr)
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

EXIT_DONE = 0
EXIT_REQUEUE = 75
EXIT_NONFINITE = 76
EXIT_HUNG = 77

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Records SIGTERM / SIGUSR1 instead of dying, so the loop can finish the step and save.

    SLURM sends SIGTERM (or a --signal of choice, often USR1) some time before killing a job at its
    time limit or on preemption. Only a flag is set here; the trainer all-reduces it every step, so
    one rank receiving the signal is enough for all to stop together.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.received is not None


class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) steps and says when to stop."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.first_bad_step: int | None = None

    def update(self, step: int, skipped: bool) -> bool:
        """Record step `step`; True when it is the max_consecutive-th skipped step in a row."""
        if not skipped:
            self.consecutive, self.first_bad_step = 0, None
            return False
        if self.consecutive == 0:
            self.first_bad_step = step
        self.consecutive += 1
        return self.consecutive >= self.max_consecutive

    def message(self, step: int, latest: str | None) -> str:
        return (f"stopping: {self.consecutive} consecutive steps ({self.first_bad_step}..{step}) had a "
                f"non-finite loss or gradient norm (train.max_consecutive_nan_steps="
                f"{self.max_consecutive}); each was skipped without updating the model. Last complete "
                f"checkpoint: {latest or 'none'}. Lower optimizer.lr, check the data around these "
                f"steps, or resume from the checkpoint.")


def _die_hung(timeout_s: float, step: int) -> None:
    sys.stderr.write(f"\nwatchdog: step {step} has run for more than train.step_timeout_s={timeout_s:g} s "
                     f"(a hung collective or a stuck loader?); stacks of all threads follow\n")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(EXIT_HUNG)  # a hung collective never returns: no clean shutdown is possible


class Watchdog:
    """Aborts the process when one step takes longer than `timeout_s`.

    `step_started(n)` arms it, `step_finished()` disarms it. A Python thread does the abort (stack
    dump + EXIT_HUNG). NOTE: if a C call holds the GIL the thread cannot run, so faulthandler's own
    C-level timer is armed too, a minute later, as a backstop (it exits with code 1).
    """

    BACKSTOP_S = 60.0

    def __init__(self, timeout_s: float, on_timeout: Callable[[float, int], None] = _die_hung):
        self.timeout_s, self.on_timeout = timeout_s, on_timeout
        self._deadline: float | None = None
        self._step = 0
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="step-watchdog", daemon=True)
        self._thread.start()

    def step_started(self, step: int) -> None:
        with self._lock:
            self._step, self._deadline = step, time.monotonic() + self.timeout_s
            self._lock.notify()
        faulthandler.dump_traceback_later(self.timeout_s + self.BACKSTOP_S, exit=True)

    def step_finished(self) -> None:
        with self._lock:
            self._deadline = None
            self._lock.notify()
        faulthandler.cancel_dump_traceback_later()

    def close(self) -> None:
        with self._lock:
            self._closed, self._deadline = True, None
            self._lock.notify()
        faulthandler.cancel_dump_traceback_later()
        self._thread.join(5)

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                if self._deadline is None:
                    self._lock.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._lock.wait(remaining)
                    continue
                step, self._deadline = self._step, None
                self.on_timeout(self.timeout_s, step)
