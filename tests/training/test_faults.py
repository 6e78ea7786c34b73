"""Watchdog, stop-signal flag and non-finite guard, in-process."""

import os
import signal
import threading
import time

from genlip_megatron.training.faults import NonFiniteGuard, StopSignals, Watchdog


def test_watchdog_fires_for_a_step_that_overruns_and_not_for_quick_ones():
    fired = []
    done = threading.Event()
    watchdog = Watchdog(0.3, on_timeout=lambda timeout, step: (fired.append(step), done.set()))
    try:
        for step in (1, 2):  # quick steps: disarmed in time
            watchdog.step_started(step)
            watchdog.step_finished()
        watchdog.step_started(3)
        assert done.wait(5), "watchdog did not fire for a hung step"
        assert fired == [3]
        watchdog.step_finished()
        time.sleep(0.5)
        assert fired == [3], "a disarmed watchdog must not fire"
    finally:
        watchdog.close()


def test_sigterm_and_sigusr1_set_the_stop_flag_instead_of_killing(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signals = StopSignals().install()
        try:
            assert not signals.requested
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            assert signals.received == sig
        finally:
            signals.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_guard_stops_on_the_kth_consecutive_skip_and_resets_on_a_good_step():
    guard = NonFiniteGuard(max_consecutive=2)
    assert [guard.update(s, skipped) for s, skipped in
            [(1, True), (2, False), (3, True), (4, True)]] == [False, False, False, True]
    assert "2 consecutive steps (3..4)" in guard.message(4, "/run/iter_0000002")
