"""Strict YAML for configs: the one reader and writer of config files, with bounded cost.

PyYAML implements YAML 1.1, whose implicit typing surprises: `010` is octal 8, `4:00` is base-60
240, `on`/`no` are booleans, `2024-01-01` is a date, and `1e-3` is a string. Configs are read with
the YAML 1.2 core schema instead (true/false, null/~, decimal and 0x integers, floats with a dot or
an exponent, .inf/.nan), except that a number with a leading zero (`010`) stays a string: YAML 1.2
reads 10 and YAML 1.1 reads 8, so we do not guess, and a numeric key then says so. `4:00`, `on` and
dates are plain strings. The writer quotes every string either reading would type, so a saved config
reads back identically under both.

Refused with a one-line YamlError (`FILE:LINE:COLUMN: problem`), before any cost grows with them:
files over MAX_BYTES or not UTF-8, nesting deeper than MAX_DEPTH, more than MAX_NODES values once
aliases are expanded (an "alias bomb" or "billion laughs" is a few lines that expand exponentially),
recursive aliases, duplicate keys (YAML says keys are unique; PyYAML silently keeps the last),
tags other than the standard ones, and anything that is not one document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # a full config is a few KB
MAX_DEPTH = 64  # configs nest 3 levels (section -> key -> list)
MAX_NODES = 100_000  # values after alias expansion; a config has a few hundred

_NULL = r"~|null|Null|NULL|"
_BOOL = r"true|True|TRUE|false|False|FALSE"
_INT = r"[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+"
_FLOAT = (r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
# (tag, pattern, first characters): the YAML 1.2 core schema, minus leading-zero integers.
_CORE_SCALARS = [
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789.")),
]
_ALLOWED_TAGS = {"tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "str", "seq", "map",
                                                    "merge")}


class YamlError(ValueError):
    """A config file or value that is not acceptable YAML; str() is one line."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with the core-schema scalars, a depth limit and duplicate-key refusal."""

    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class):
        # The scanner looks ahead over every open flow level per token (quadratic in the depth):
        # stop at the limit here, before the composer would.
        super().fetch_flow_collection_start(token_class)
        if self.flow_level > MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                            self.get_mark())

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


for _tag, _pattern, _first in _CORE_SCALARS:
    _StrictLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), _first)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes what the strict loader would type (so both readings agree)."""


for _tag, _pattern, _first in _CORE_SCALARS[1:]:
    _Dumper.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), _first)
# Short lists (`mrope_section: [8, 12, 12]`) read best inline, as the presets write them.
_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def _check_nodes(root) -> None:
    """Count values with aliases expanded (memoised: linear in the distinct nodes), refuse cycles."""
    size: dict[int, int] = {}
    stack = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_NODES} values once aliases are expanded", node.start_mark)
            continue
        if key in size:
            continue
        if key in on_path:
            raise yaml.composer.ComposerError(None, None, "a recursive alias", node.start_mark)
        if node.tag not in _ALLOWED_TAGS:
            raise yaml.composer.ComposerError(None, None, f"tag {node.tag!r} is not allowed", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node) -> list:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _one_line(exc: yaml.YAMLError, where: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{where}:{mark.line + 1}:{mark.column + 1}: {problem}"
    return f"{where}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"


def parse_yaml(text: str, where: str = "<text>") -> Any:
    """One YAML document -> Python data, strictly (module docstring). YamlError names `where`."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"{where}: {len(text)} characters, more than the {MAX_BYTES} a config may have")
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character such as NUL
        raise YamlError(f"{where}: character {exc.position}: unacceptable character "
                        f"#x{ord(exc.character) if isinstance(exc.character, str) else exc.character:04x}"
                        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(_one_line(exc, where)) from None
    except RecursionError:
        raise YamlError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path) -> Any:
    """parse_yaml of a file, which must be UTF-8 and at most MAX_BYTES."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise YamlError(f"{path}: larger than the {MAX_BYTES} bytes a config may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    return parse_yaml(text.removeprefix("\ufeff"), str(path))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
