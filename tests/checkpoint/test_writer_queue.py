"""The checkpoint writer's queue server dies with the rank that started it (SIGKILL included)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")

CHILD = textwrap.dedent("""
    import sys, time
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from genlip_megatron.checkpoint.writer_queue import install_writer_queue
    install_writer_queue()
    queue = filesystem_async._get_write_results_queue()
    assert queue is filesystem_async._results_queue
    queue.put("ok"); assert queue.get() == "ok"
    print(filesystem_async._genlip_manager._process.pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_queue_server_exits_when_its_rank_is_killed():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        server = int(child.stdout.readline())
        assert _alive(server), "the queue server did not start"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 30
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server), f"queue server {server} outlived its SIGKILLed parent"
