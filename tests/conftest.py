"""Session-wide fixtures. Only the multi-process harness lives here (see tests/multiproc.py)."""

import pytest
from multiproc import shutdown_pools  # tests/ is on sys.path: pytest inserts a conftest's folder


@pytest.fixture(scope="session", autouse=True)
def _worker_pools():
    """Worker pools start on first use and stop when the session ends."""
    yield
    shutdown_pools()


@pytest.fixture(scope="session")
def tiny_real_run(tmp_path_factory):
    """A tiny GenLIP trained 60 steps (long enough for captions to depend on the image) by `genlip train`
    on real shards named by a RELATIVE folder
    (data.manifest=shards, from `home`), vocabulary unset (taken from the tokenizer).
    {"home", "elsewhere" (another empty folder), "paths" (fmnist_run.build_dataset), "run"}."""
    from fmnist_run import TINY_REAL, build_dataset, genlip

    root = tmp_path_factory.mktemp("tiny_real_run")
    home, elsewhere = root / "project", root / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    paths = build_dataset(str(home))
    done = genlip(["train", "tiny_cpu", "data.manifest=shards", "checkpoint.dir=run", "schedule.train_iters=60",
                   *TINY_REAL], cwd=str(home))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"home": home, "elsewhere": elsewhere, "paths": paths, "run": home / "run"}
