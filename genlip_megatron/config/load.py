"""Load a Config from a preset or YAML file plus dotted command-line overrides; save it back.

Order of application: the `base:` chain (outermost base first), the file itself, then overrides such
as `model.num_layers=4` or `model.mrope_section=[2,3,3]`. Every value is type-checked against the
schema's annotation; all problems are collected and raised together as one ConfigError, so a user
fixes a config in one round instead of one error per run.

NOTE: this module imports neither torch nor megatron: `genlip config` and launch code must stay fast
and work on a login node without a GPU stack.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

from genlip_megatron.config import yaml_io
from genlip_megatron.config.schema import Config
from genlip_megatron.errors import InputError

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(InputError):
    """One or more configuration problems; str() is one problem per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def parse_yaml(text: str, where: str = "<text>") -> Any:
    """Strict YAML (yaml_io.py); kept here for the callers that parse config snippets."""
    return yaml_io.parse_yaml(text, where)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # The schema uses `from __future__ import annotations`, so annotations are strings until resolved.
    return typing.get_type_hints(cls)


def _sections() -> dict[str, type]:
    """Section name -> its dataclass, e.g. 'model' -> ModelConfig."""
    return _hints(Config)


def _annotation(key: str) -> Any:
    """The schema type of dotted `key`, or None when there is no such key."""
    section_name, _, field_name = key.partition(".")
    section_cls = _sections().get(section_name)
    return _hints(section_cls).get(field_name) if section_cls else None


def _all_keys() -> list[str]:
    return [f"{name}.{key}" for name, cls in _sections().items() for key in _hints(cls)]


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys() + list(_sections()), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}"


_UNIONS = (typing.Union, types.UnionType)  # Optional[int] and int | None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _UNIONS:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return annotation.__name__


def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _UNIONS:
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:  # an int is a fine float (`lr: 1`); a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:  # bool is a subclass of int in Python; `num_layers: true` is a mistake
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _normalise(value: Any, annotation: Any) -> Any:
    """Ints become floats where the schema says float, so a saved config reads `0.0`, not `0`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if value is None:
        return None
    if origin in _UNIONS:
        return _normalise(value, next(a for a in args if a is not type(None) and _matches(value, a)))
    if origin is list:
        return [_normalise(v, args[0]) for v in value]
    return float(value) if annotation is float else value


_REPR = reprlib.Repr()  # Python 3.11: limits are attributes, not constructor arguments
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 4, 2
# Numbers YAML 1.1 reads differently (yaml_io.py keeps them strings): a leading zero (octal there)
# and colon groups (base 60 there: `4:00` is 240).
_YAML11_NUMBER = re.compile(r"^[-+]?(?:0[0-9_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)$")


def _short(value: Any) -> str:
    """repr of a value, cut to one short line (an error must not print a megabyte of YAML)."""
    return _REPR.repr(value)


def _short_text(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _yaml11_hint(value: Any) -> str:
    if isinstance(value, str) and _YAML11_NUMBER.match(value.strip()):
        return (" (YAML 1.1 would read this as an octal or base-60 number; write the plain decimal "
                "number you mean)")
    return ""


# Keys that configured nothing and were removed: (the value every config saved before held, why).
# A saved config (the config a checkpoint saved) still loads; any other value is refused with the reason.
RETIRED: dict[str, tuple[Any, str]] = {
    "optimizer.name": ("adamw", "removed: AdamW is the only optimizer (megatron-core's, decoupled weight decay)"),
}


def _set(cfg: Config, key: str, value: Any, errors: list[str], where: str) -> None:
    """Type-check `value` for dotted `key` and store it; on failure append a message to errors."""
    prefix = f"{where}: " if where else ""
    annotation = _annotation(key)
    if key in RETIRED:
        if value != RETIRED[key][0]:
            errors.append(f"{prefix}{key}: {RETIRED[key][1]}")
        return
    if annotation is None:
        errors.append(prefix + _unknown_key(key))
        return
    if not _matches(value, annotation):
        kind = "null" if value is None else type(value).__name__
        errors.append(f"{prefix}{key}: expected {_type_name(annotation)}, got {kind} {_short(value)}"
                      + _yaml11_hint(value))
        return
    section_name, _, field_name = key.partition(".")
    setattr(getattr(cfg, section_name), field_name, _normalise(value, annotation))


def _apply_mapping(cfg: Config, data: dict, errors: list[str], where: str) -> None:
    for section_name, values in data.items():
        if section_name not in _sections():
            errors.append(f"{where}: {_unknown_key(str(section_name))}")
        elif not isinstance(values, dict):
            errors.append(f"{where}: {section_name}: expected a mapping of keys, got {_short(values)}")
        else:
            for field_name, value in values.items():
                _set(cfg, f"{section_name}.{field_name}", value, errors, where)


def _resolve_source(name: str, relative_to: Path | None = None) -> Path | None:
    """A preset name (no suffix, no slash) or a path, relative paths taken from the including file."""
    if "/" not in name and not name.endswith((".yaml", ".yml")):
        preset = PRESET_DIR / f"{name}.yaml"
        return preset if preset.is_file() else None
    path = Path(name).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    return path if path.is_file() else None


def _read_chain(name: str, errors: list[str]) -> list[tuple[str, dict]]:
    """[(file, mapping without 'base')], outermost base first."""
    chain: list[tuple[str, dict]] = []
    seen: set[Path] = set()
    relative_to: Path | None = None
    while name is not None:
        path = _resolve_source(name, relative_to)
        if path is None:
            errors.append(f"no preset or YAML file named '{name}' (presets: {', '.join(preset_names())})")
            break
        if path.resolve() in seen:
            errors.append(f"{path}: 'base' chain loops back to this file")
            break
        seen.add(path.resolve())
        try:
            data = yaml_io.read_yaml_file(path)
        except yaml_io.YamlError as exc:
            errors.append(str(exc))
            break
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc.strerror or exc}")
            break
        data = {} if data is None else data
        if not isinstance(data, dict):
            errors.append(f"{path}: expected a mapping of sections at the top level")
            break
        data = dict(data)
        name = data.pop("base", None)
        if name is not None and not isinstance(name, str):
            errors.append(f"{path}: base: expected a preset name or a path, got {_short(name)}")
            name = None
        chain.insert(0, (str(path), data))
        relative_to = path.parent
    return chain


def parse_override(text: str) -> tuple[str, Any]:
    """'model.num_layers=4' -> ('model.num_layers', 4). Raises ValueError when it cannot be parsed.

    The value is read as YAML, except that a string field takes the raw text as it is: on a command
    line `logging.wandb_run_name=0412` or `data.manifest=` should not need shell-quoted YAML quotes.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override '{text}': expected KEY=VALUE, e.g. model.num_layers=4")
    if _annotation(key) is str:
        return key, raw
    try:
        return key, yaml_io.parse_yaml(raw, "value")
    except yaml_io.YamlError as exc:
        raise ValueError(f"override '{_short_text(text)}': cannot parse {exc}") from None


def load_config(path_or_preset: str, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a Config from a preset name or YAML path (with its `base:` chain) and dotted overrides.

    Raises ConfigError listing every unknown key, wrong type and unreadable file at once. This does
    not check cross-field consistency; that is `validate.validate` / `validate.check`.
    """
    errors: list[str] = []
    cfg = Config()
    for where, data in _read_chain(path_or_preset, errors):
        _apply_mapping(cfg, data, errors, where)
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        _set(cfg, key, value, errors, where="")
    if errors:
        raise ConfigError(errors)
    return cfg


def config_from_dict(data: dict, where: str = "saved config") -> Config:
    """A Config from a nested dict such as `config_to_dict` returns (unknown keys and wrong types
    raise ConfigError, as for a YAML file)."""
    errors: list[str] = []
    cfg = Config()
    _apply_mapping(cfg, data, errors, where)
    if errors:
        raise ConfigError(errors)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (sections in schema order), safe to dump as YAML or JSON."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The whole resolved config as YAML text that load_config reads back to an equal Config."""
    return yaml_io.dump_yaml(config_to_dict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text("# resolved by genlip-megatron; load with `genlip config THIS_FILE`\n"
                          + dump_config(cfg), encoding="utf-8")
