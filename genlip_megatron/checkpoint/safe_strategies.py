"""megatron-core dist_checkpointing load strategies that read through checkpoint/safe_load.py.

`dist_checkpointing.load(state, folder)` picks its strategies from the folder's metadata.json and
then unpickles `.metadata` with plain pickle and stored objects with weights_only=False. Passing
`load_strategies(folder)` instead routes every read through safe_load: the allow-list metadata
unpickler, plain-data objects and common.pt. Only the torch_dist backend (what we write) is read.

The sharded strategy's `load` mirrors megatron-core 0.16's TorchDistLoadShardedStrategy.load with the
file-system reader swapped (that method builds its reader itself, with no way to pass one in); the
hostile-checkpoint tests (tests/hostile/test_checkpoints.py) and the resume tests fail if an upgrade
changes what it relies on.
"""

from __future__ import annotations

from megatron.core.dist_checkpointing.strategies import torch as mcore_torch
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from genlip_megatron.checkpoint.safe_load import (
    CheckpointError,
    SafeFileSystemReader,
    check_backend,
    load_common,
)


class SafeTorchDistLoadStrategy(mcore_torch.TorchDistLoadShardedStrategy):
    def load(self, sharded_state_dict, checkpoint_dir):
        flexible = [t for t in mcore_torch.nested_values(sharded_state_dict)
                    if isinstance(t, mcore_torch.ShardedTensor) and not t.allow_shape_mismatch]
        mismatch_ok = {t.key: t for t in mcore_torch.nested_values(sharded_state_dict)
                       if isinstance(t, mcore_torch.ShardedTensor) and t.allow_shape_mismatch}
        original = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = \
            mcore_torch._replace_state_dict_keys_with_sharded_keys(sharded_state_dict)
        pyt_state_dict = mcore_torch.mcore_to_pyt_state_dict(sharded_state_dict, True)
        reader = SafeFileSystemReader(str(checkpoint_dir))
        # Metadata and stored objects are checked here, before the first collective: a refusal then
        # reaches every rank as the same CheckpointError instead of torch's multi-rank report.
        reader.read_metadata()
        reader.check_objects()
        try:
            dcp.load_state_dict(pyt_state_dict, reader, planner=mcore_torch.MCoreLoadPlanner(
                shapes_validation_sharded_tensors=flexible, allow_shape_mismatch_sharded_tensors=mismatch_ok))
        except CheckpointException as exc:  # a chunk refused while reading, on one rank or several
            refusals = [e for e, _ in exc.failures.values() if isinstance(e, CheckpointError)]
            if refusals:
                raise refusals[0] from None
            raise
        self.cached_global_metadata = reader.read_metadata()
        state = {k: mcore_torch._unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        state = mcore_torch._replace_sharded_keys_with_state_dict_keys(state, flat_mapping, rename_mapping)
        mcore_torch._restore_dict_types(state, original)
        return state

    def load_tensors_metadata(self, checkpoint_dir, metadata=None):
        if metadata is None:
            metadata = SafeFileSystemReader(str(checkpoint_dir)).read_metadata()
        return super().load_tensors_metadata(checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir):
        raise NotImplementedError("genlip-megatron loads with strict=ASSUME_OK_UNEXPECTED only")

    def remove_sharded_tensors(self, checkpoint_dir, key_prefix):
        raise NotImplementedError("genlip-megatron never edits a saved checkpoint")


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    def load_common(self, checkpoint_dir):
        return load_common(str(checkpoint_dir))

    def load_sharded_objects(self, sharded_objects_state_dict, checkpoint_dir):
        raise NotImplementedError("objects live in the torch_dist files, read by SafeTorchDistLoadStrategy")

    def load_sharded_metadata(self, checkpoint_dir):
        raise NotImplementedError("objects live in the torch_dist files, read by SafeTorchDistLoadStrategy")


def load_strategies(folder: str) -> dict:
    """Keyword arguments for dist_checkpointing.load(state, folder, **load_strategies(folder))."""
    check_backend(folder)
    return {"sharded_strategy": SafeTorchDistLoadStrategy(), "common_strategy": SafeCommonLoadStrategy()}
