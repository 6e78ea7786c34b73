"""Rank-side code of tests/convert/test_official_configs.py (runs inside the pooled gloo workers)."""

from __future__ import annotations

import dataclasses


def megatron_parameter_count(model_cfg) -> int:
    """Parameters of the megatron-core GenLIP at TP1 PP1, built on the meta device (nothing allocated)."""
    import torch

    from genlip_megatron.config.schema import Config, padded_vocab_size
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    cfg = Config(model=model_cfg)
    cfg.train.device, cfg.train.precision = "cpu", "fp32"
    with torch.device("meta"):
        model = GenLIPModel(genlip_transformer_config(cfg), cfg.model, padded_vocab_size(cfg.model, 1))
    return sum(p.numel() for p in model.parameters())


class _Recording:
    """The synthetic batch source, keeping every micro-batch it hands out (as the dict of tensors the
    plain-torch reference's loss_packed reads)."""

    def __init__(self, source):
        self.source, self.seen = source, []

    def next(self):
        batch = self.source.next()
        self.seen.append(dataclasses.asdict(batch))
        return batch

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def train_converted(config_yaml: str, overrides: list[str]) -> dict:
    """`genlip train OUT/config.yaml` in this world: the step losses and the first step's micro-batches."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from genlip_megatron.config.load import load_config
    from genlip_megatron.config.validate import check
    from genlip_megatron.training.batches import SyntheticBatches
    from genlip_megatron.training.trainer import run_training

    cfg = check(load_config(config_yaml, overrides), world_size=dist.get_world_size())
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    source = _Recording(SyntheticBatches(cfg, dp_rank, dp_size))
    outcome = run_training(cfg, source)
    first_step = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp_size)
    return {"losses": outcome.losses, "exit_code": outcome.exit_code, "batches": source.seen[:first_step]}
