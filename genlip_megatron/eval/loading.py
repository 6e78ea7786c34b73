"""The model to evaluate, from an HF folder, a training checkpoint or a config (random init, the
baseline of the same size), whatever its objective: each objective's spec builds its evaluation
model (objectives/<name>/evaluation.py; the interface eval/ reads is `forward_packed`,
`build_packed_inputs`, `config.patch_size`, `config.vocab_size`).

Evaluation runs in one process on plain torch: the numbers do not depend on the parallel layout a
model was trained with. A training checkpoint is read tensor by tensor by checkpoint/reader.py
(convert/dispatch.read_full_state_dict); an HF folder goes to the objective whose export has its
`model_type`.
"""

from __future__ import annotations

import copy
import os

import torch

from genlip_megatron.objectives import registry


def load_checkpoint_model(path: str):
    """Run directory or checkpoint folder -> (its objective's evaluation model, eval mode, fp32; the
    run's Config)."""
    from genlip_megatron.convert.dispatch import read_full_state_dict

    state_dict, cfg, spec = read_full_state_dict(path)
    state_dict = {k: v.float() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    return spec.eval_model(state_dict, cfg).eval(), cfg


def load_model(path: str):
    """An HF folder (config.json + weights) or a training run directory / checkpoint folder, as its
    objective's evaluation model, in eval mode, fp32."""
    if os.path.isfile(os.path.join(path, "config.json")):
        from genlip_megatron.convert.dispatch import hf_model_type
        _, spec = registry.spec_for_hf_model_type(hf_model_type(path))
        return spec.load_hf_eval_model(path)
    return load_checkpoint_model(path)[0]


def hf_eval_tasks(folder: str) -> tuple[str, ...]:
    """The evaluation tasks of the objective whose Hugging Face export `folder` is."""
    from genlip_megatron.convert.dispatch import hf_model_type

    return registry.spec_for_hf_model_type(hf_model_type(folder))[1].eval_tasks


def random_model(cfg, seed: int = 0):
    """A randomly initialised evaluation model of the size `cfg` (a Config) describes."""
    return registry.spec_for(cfg).random_eval_model(cfg, seed).eval()


def random_like(model, seed: int = 0):
    """A randomly initialised evaluation model with the same config as `model` (any objective: its
    class is built from a copy of its config)."""
    torch.manual_seed(seed)
    return type(model)(copy.deepcopy(model.config)).eval()
