"""How the fused kernels are compiled: one static kernel per tensor shape, whatever ran before.

The fusions (bias + SwiGLU, RoPE, the LayerScale residual) are torch.compile'd functions. By default
torch.compile recompiles a function with symbolic sizes once it has seen a second shape and tries the
newest cache entry first, so the kernel a call runs, and its last-bit rounding, depended on which
shapes the process had seen earlier (an evaluation pass, another test in the same worker). That broke
bitwise resume checks: a resumed run could take the symbolic kernel where the uninterrupted run took
the static one. Here every shape gets its own static kernel, and enough cache entries are kept that
a process meeting many shapes (a test worker, an evaluation of varied batches) does not fall back to
eager for some of them. Training runs at fixed shapes, so this costs it nothing.
"""

from __future__ import annotations

import torch._dynamo.config as dynamo_config

CACHE_ENTRIES = 256  # per compiled function


def apply() -> None:
    """Static shapes for every torch.compile'd fusion of this process (idempotent)."""
    dynamo_config.automatic_dynamic_shapes = False
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, CACHE_ENTRIES)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * CACHE_ENTRIES)
