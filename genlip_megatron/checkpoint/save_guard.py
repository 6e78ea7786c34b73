"""A checkpoint save that cannot succeed fails in one line and leaves every earlier checkpoint intact.

Two parts, both on every rank:
- `check_free_space` before anything is written: rank 0 measures the free space under the run
  folder and every rank gets the same verdict, so all of them stop together (one rank stopping
  alone would leave the others waiting in a collective). The size needed is the previous
  checkpoint's, or, for the first one, the model's parameters x (their bytes + 12 bytes of fp32
  main weights and Adam moments).
- `save_errors` around the write: an OSError met while writing (the disk filled up meanwhile, a
  read-only or vanished folder), raised directly or wrapped in torch's multi-rank
  CheckpointException, becomes one OSError naming the checkpoint folder, and the partial folder is
  removed (it is never the one `latest` names).
The `latest` marker only moves after a complete save, so it keeps naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

OPTIMIZER_BYTES_PER_PARAM = 12  # fp32 main weight + Adam exp_avg + exp_avg_sq (distributed optimizer)
MARGIN = 1.05  # metadata, common state and file-system rounding


def _folder_bytes(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def estimated_bytes(model_chunks, data_parallel_size: int, previous: str | None) -> int:
    """Bytes the next checkpoint needs (collective: every rank calls it)."""
    local = sum(p.numel() * (p.element_size() + OPTIMIZER_BYTES_PER_PARAM)
                for chunk in model_chunks for p in chunk.parameters()) / data_parallel_size
    device = next(iter(model_chunks[0].parameters())).device
    total = torch.tensor([local], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    estimate = int(total.item() * MARGIN)
    return max(estimate, _folder_bytes(previous)) if previous and os.path.isdir(previous) else estimate


def check_free_space(run_dir: str, path: str, needed: int, device) -> None:
    """OSError(ENOSPC) on every rank when rank 0 sees less than `needed` bytes free under run_dir."""
    probe = run_dir
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:  # a run folder not made yet
        probe = os.path.dirname(probe)
    free = float(shutil.disk_usage(probe).free) if dist.get_rank() == 0 else 0.0
    verdict = torch.tensor([free], dtype=torch.float64, device=device)
    dist.broadcast(verdict, src=0)
    free = int(verdict.item())
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: saving checkpoint {path} needs about "
                      f"{needed / 2 ** 20:.1f} MiB, {run_dir} has {free / 2 ** 20:.1f} MiB free; "
                      "earlier checkpoints are intact", run_dir)


# megatron-core's writer processes report "Worker failure: [Errno 28] No space left on device" as a
# RuntimeError, and the cause does not survive the gather between ranks: read it from the text.
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:'\n]+)(?:: '([^'\n]*)')?")


def _os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, CheckpointException):
        found = [_os_error(e) for e, _ in exc.failures.values()]
        return next((e for e in found if e is not None), None)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and _os_error(cause) is not None:
        return _os_error(cause)
    match = _ERRNO_TEXT.search(str(exc))
    return OSError(int(match.group(1)), match.group(2).strip(), match.group(3)) if match else None


@contextlib.contextmanager
def save_errors(path: str):
    """Turn a failed write of checkpoint folder `path` into one OSError naming it; remove the partial folder."""
    try:
        yield
    except BaseException as exc:  # CheckpointException is a BaseException
        found = _os_error(exc)
        if found is None:
            raise
        if dist.get_rank() == 0:
            shutil.rmtree(path, ignore_errors=True)
        reason = found.strerror or str(found)
        raise OSError(found.errno, f"{reason} while saving checkpoint {path} (removed; earlier "
                      "checkpoints are intact)", found.filename) from None
