"""Updated parameters on every data-parallel rank before anything reads them outside a step.

With the distributed optimizer each rank updates its shard of the parameters and an all-gather
brings the rest. With `parallel.overlap_param_gather` megatron-core defers that all-gather to the
next forward (pre-hooks on every module wait for their bucket), so between steps half a DP2 rank's
parameters are one update behind. A checkpoint's model weights (what `genlip convert` and
`genlip eval` read) and the held-out evaluation must not see that: `gathered_params` completes the
all-gather first and re-arms the hooks after, as megatron's own training loop does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def gathered_params(model: list, overlap_param_gather: bool) -> Iterator[None]:
    """Inside the block every rank holds all updated parameters (a no-op without the overlap)."""
    if not overlap_param_gather:
        yield
        return
    for chunk in model:
        chunk.disable_forward_pre_hook()  # runs the deferred all-gather synchronously
    try:
        yield
    finally:
        for chunk in model:
            chunk.enable_forward_pre_hook()
