"""Session-wide fixtures. Only the multi-process harness lives here (see tests/multiproc.py)."""

import pytest
from multiproc import shutdown_pools  # tests/ is on sys.path: pytest inserts a conftest's folder


@pytest.fixture(scope="session", autouse=True)
def _worker_pools():
    """Worker pools start on first use and stop when the session ends."""
    yield
    shutdown_pools()
