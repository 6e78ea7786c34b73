"""Pooled multi-process test harness: run one function on every rank of a CPU/gloo world.

Importing megatron.core costs ~7 s and ~360 MB per process, so each world size gets ONE pool of
long-lived spawned workers per pytest session (CPU adaptations applied, one torch thread each).
A call re-lays the model-parallel grid (tp/pp/vpp/cp) inside the live group, runs the function and
returns its result from every rank:

    results = run_on_ranks(2, my_top_level_fn, arg, tp=2)   # [result of rank 0, result of rank 1]

`fn` must be a picklable top-level function; its return value must be picklable. An exception in
any rank is re-raised here as RankError carrying that rank's traceback. A call that does not finish
within `timeout` raises TimeoutError. After either, a pool whose ranks did not all come back
(one rank stuck in a collective) is killed and the next call starts a fresh one.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

STARTUP_TIMEOUT_S = 180.0  # a world of 4 on 2 busy cores has taken ~20 s
GRACE_AFTER_ERROR_S = 10.0  # how long the other ranks get to report after one rank failed
WORKER_COLLECTIVE_TIMEOUT_S = 300.0  # gloo timeout inside workers; the parent kills hung pools sooner


class RankError(RuntimeError):
    """A rank raised; the message holds every failing rank's traceback."""

    def __init__(self, failures: dict[int, str]):
        self.failures = failures
        first = min(failures)
        details = "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in sorted(failures.items()))
        super().__init__(f"rank {first} raised (failing ranks {sorted(failures)}):\n{details}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _next_task(tasks, parent: int):
    """The next task, or None once told to stop or once the parent process has gone away."""
    while os.getppid() == parent:
        try:
            return tasks.get(timeout=5.0)
        except queue.Empty:
            continue
    return None


def _worker(rank: int, world_size: int, port: int, tasks, results) -> None:
    import torch

    torch.set_num_threads(1)  # N ranks share 2 cores: more threads only oversubscribe
    try:
        from genlip_megatron.runtime.distributed import destroy_distributed, init_distributed

        init_distributed(
            rank, world_size, "127.0.0.1", port, device="cpu", timeout_s=WORKER_COLLECTIVE_TIMEOUT_S
        )
    except BaseException:  # noqa: BLE001 - every failure, whatever it is, goes to the parent
        results.put(("startup", rank, False, traceback.format_exc()))
        return
    results.put(("startup", rank, True, None))
    from genlip_megatron.runtime.distributed import reset_model_parallel

    parent = os.getppid()
    while (task := _next_task(tasks, parent)) is not None:
        task_id, fn, args, kwargs, layout = task
        try:
            reset_model_parallel(**layout)
            # Pickled here, not in the queue's feeder thread, so an unpicklable result is reported.
            payload = (task_id, rank, True, pickle.dumps(fn(*args, **kwargs)))
        except BaseException:  # noqa: BLE001 - every failure, whatever it is, goes to the parent
            payload = (task_id, rank, False, traceback.format_exc())
        results.put(payload)
    destroy_distributed()


class WorkerPool:
    """`world_size` spawned ranks joined in one gloo world, serving `run` calls one at a time."""

    def __init__(self, world_size: int):
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        self._next_task = 0
        self._killed = False
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned workers
        port = _free_port()
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(rank, world_size, port, self._tasks[rank], self._results),
                # Not daemonic: dist_checkpointing.save starts a multiprocessing Manager, and
                # daemonic processes may not have children. Orphaned workers exit by themselves.
                daemon=False,
                name=f"multiproc-rank{rank}",
            )
            for rank in range(world_size)
        ]
        for proc in self._procs:
            proc.start()
        replies = self._collect("startup", STARTUP_TIMEOUT_S, grace_s=STARTUP_TIMEOUT_S)
        failures = {rank: tb for rank, (ok, tb) in replies.items() if not ok}
        if failures or len(replies) < world_size:
            self.kill()
            raise RankError(failures) if failures else TimeoutError("worker pool did not start")

    def alive(self) -> bool:
        return not self._killed and all(proc.is_alive() for proc in self._procs)

    def run(self, fn: Callable, args: tuple, kwargs: dict, layout: dict, timeout: float) -> list[Any]:
        self._next_task += 1
        task_id = self._next_task
        for task_queue in self._tasks:
            task_queue.put((task_id, fn, args, kwargs, layout))
        replies = self._collect(task_id, timeout, grace_s=GRACE_AFTER_ERROR_S)
        failures = {rank: tb for rank, (ok, tb) in replies.items() if not ok}
        if len(replies) < self.world_size:
            self.kill()  # some rank is stuck (typically in a collective its peer left)
            if not failures:
                raise TimeoutError(f"{fn.__name__} did not finish on all ranks within {timeout} s")
        if failures:
            raise RankError(failures)
        return [pickle.loads(replies[rank][1]) for rank in range(self.world_size)]

    def _collect(self, task_id, timeout: float, grace_s: float) -> dict[int, tuple[bool, Any]]:
        """Replies per rank for `task_id`; stops early `grace_s` after the first failure."""
        replies: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < self.world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.alive():
                break
            try:
                reply_id, rank, ok, value = self._results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if reply_id != task_id:
                continue  # a late reply from an earlier, abandoned call
            replies[rank] = (ok, value)
            if not ok:
                deadline = min(deadline, time.monotonic() + grace_s)
        return replies

    def close(self, timeout: float = 30.0) -> None:
        for task_queue in self._tasks:
            task_queue.put(None)
        for proc in self._procs:
            proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        self._killed = True
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(5)


_pools: dict[int, WorkerPool] = {}


def run_on_ranks(
    world_size: int,
    fn: Callable,
    *args: Any,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    cp: int = 1,
    seed: int = 1234,
    timeout: float = 120.0,
    **kwargs: Any,
) -> list[Any]:
    """Run `fn(*args, **kwargs)` on every rank of the pooled world; return results by rank."""
    pool = _pools.get(world_size)
    if pool is None or not pool.alive():
        pool = _pools[world_size] = WorkerPool(world_size)
    layout = {"tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "seed": seed}
    return pool.run(fn, args, kwargs, layout, timeout)


def shutdown_pools() -> None:
    """Stop every pool (end of the pytest session); safe to call twice."""
    while _pools:
        _, pool = _pools.popitem()
        pool.close()


atexit.register(shutdown_pools)  # in case a session ends without the conftest fixture
