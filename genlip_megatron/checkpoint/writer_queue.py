"""The checkpoint writer's results queue, served by a process that dies with its training rank.

megatron-core's `torch_dist` save collects write results through a `multiprocessing.Manager().Queue()`
that it creates lazily, once per process, in a spawned server process. When the rank that owns it is
killed (SIGKILL, the OOM killer, a node agent), nothing stops that server: it lives on, ~330 MB each,
for as long as the machine does (seen on our test machines: 94 of them after a day of kill tests).
On Linux we start the same kind of server ourselves with a parent-death signal, and hand megatron-core
its queue before the first save; elsewhere megatron-core keeps its own.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys
from multiprocessing.managers import SyncManager

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Initializer of the server process: the kernel sends it SIGKILL when its parent exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def install_writer_queue() -> None:
    """Give megatron-core's async filesystem writer a results queue whose server dies with this rank.

    Idempotent; a no-op off Linux or when megatron-core already made its queue.
    """
    if not sys.platform.startswith("linux"):
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", None) is not None:
        return
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=_die_with_parent)
    filesystem_async._results_queue = manager.Queue()
    filesystem_async._genlip_manager = manager  # keep the manager (and its server) alive with the module
