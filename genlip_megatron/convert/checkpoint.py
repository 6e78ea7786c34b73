"""A megatron-core training checkpoint -> FULL megatron-core state dict, in one process, no process group.

A direct read of the stored global tensors (checkpoint_reader.py): works for any saving layout and for
TE-spec checkpoints on CPU. Used by evaluation (eval/loading.py).
Holds the whole model in memory; `genlip convert to-hf` is the streaming path.
"""

from __future__ import annotations

from genlip_megatron.checkpoint.reader import CheckpointReader
from genlip_megatron.convert.to_hf import check_matches


def load_full_mcore_state_dict(path: str):
    """Run directory or checkpoint folder -> ({global mcore name: tensor (as stored)}, the run's Config)."""
    reader = CheckpointReader(path)
    cfg = reader.run_config()
    check_matches(reader, cfg)
    return {name: reader.load(name) for name in reader}, cfg
