"""Objectives by name: the one module that names them.

    get("genlip")                  -> the GenLIP spec (objectives/genlip/)
    spec_for(cfg)                  -> the spec of cfg.model.objective
    register("cappa", CapPaSpec()) -> a new objective, e.g. from a test or a user's plug-in module

Built-in specs are imported on first use, so `names()` (config validation, `genlip config`) costs
no torch or megatron import. A built-in objective is one folder under objectives/ whose package
defines `SPEC`, plus one line in `_BUILT_IN`.
"""

from __future__ import annotations

import importlib

DEFAULT_OBJECTIVE = "genlip"
_BUILT_IN = {
    "genlip": "genlip_megatron.objectives.genlip",
    "aimv2": "genlip_megatron.objectives.aimv2",
}
_registered: dict = {}


def register(name: str, spec, *, replace: bool = False) -> None:
    """Make `spec` (an ObjectiveSpec) the objective called `name` (`model.objective: name`)."""
    if not replace and (name in _registered or name in _BUILT_IN):
        raise ValueError(f"objective {name!r} is already registered")
    _registered[name] = spec


def unregister(name: str) -> None:
    """Forget a registered objective (tests); built-ins come back on their next use."""
    _registered.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*_BUILT_IN, *_registered]))


def get(name: str):
    """The ObjectiveSpec called `name`; ValueError (one line) for an unknown name."""
    if name not in _registered:
        if name not in _BUILT_IN:
            raise ValueError(f"model.objective: unknown objective {name!r}; choose from {', '.join(names())}")
        _registered[name] = importlib.import_module(_BUILT_IN[name]).SPEC
    return _registered[name]


def spec_for(cfg):
    """The spec of a Config's `model.objective`."""
    return get(cfg.model.objective)


def spec_for_hf_model_type(model_type: str, *, importing: bool = False):
    """(name, spec) of the objective whose Hugging Face export has `model_type` (and, with
    `importing`, that turns such a folder back into a checkpoint)."""
    found = [(n, get(n)) for n in names()]
    found = [(n, s) for n, s in found if s.hf_model_type is not None and (s.imports_hf or not importing)]
    for name, spec in found:
        if spec.hf_model_type == model_type:
            return name, spec
    raise ValueError(f"model_type {model_type!r}: no objective {'imports' if importing else 'exports'} it "
                     f"(known: {', '.join(s.hf_model_type for _, s in found)})")
