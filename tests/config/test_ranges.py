"""Specification of config/ranges.py: every key of the schema has a rule, and every rule refuses a
value just outside it (and accepts its ends) in one line that names the key."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from genlip_megatron.config import ranges
from genlip_megatron.config.load import _all_keys, _annotation, load_config
from genlip_megatron.config.schema import Config

RULED = {**{k: "choice" for k in ranges.CHOICES}, **{k: "range" for k in ranges.RANGES},
         **{k: "text" for k in ranges.TEXT}, **{k: "list" for k in ranges.LIST_ITEMS}}


def _with(key: str, value) -> Config:
    cfg = load_config("tiny_cpu")
    section, _, name = key.partition(".")
    setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **{name: value}))
    return cfg


def _lines_for(key: str, value) -> list[str]:
    return [line for line in ranges.key_problems(_with(key, value))[0]]


def _is_float(key: str) -> bool:
    annotation = _annotation(key)
    return annotation is float or float in typing.get_args(annotation)


def test_every_key_of_the_schema_has_exactly_one_rule_or_is_a_flag():
    counts = {k: sum(k in table for table in (ranges.CHOICES, ranges.RANGES, ranges.TEXT, ranges.LIST_ITEMS))
              for k in _all_keys()}
    missing = [k for k, n in counts.items() if n == 0 and _annotation(k) is not bool]
    assert not missing, f"keys without a rule in config/ranges.py: {missing}"
    assert not [k for k, n in counts.items() if n > 1]
    assert set(RULED) <= set(_all_keys()), f"rules for keys that do not exist: {set(RULED) - set(_all_keys())}"


def test_every_preset_passes_every_rule():
    from genlip_megatron.config.load import preset_names

    for name in preset_names():
        assert ranges.key_problems(load_config(name))[0] == [], name


@pytest.mark.parametrize("key", sorted(ranges.RANGES))
def test_range_accepts_its_ends_and_refuses_one_step_beyond_each(key):
    rule = ranges.RANGES[key]
    floating = _is_float(key)
    step = 1e-9 * max(1.0, abs(rule.high)) if floating else 1
    kind = float if floating else int
    inside_low = rule.low + (step if rule.low_open else 0)
    inside_high = rule.high - (step if rule.high_open else 0)
    for value in (inside_low, inside_high):
        assert _lines_for(key, kind(value)) == [], (key, value)
    for value in (rule.low - step if not rule.low_open else rule.low,
                  rule.high + step if not rule.high_open else rule.high):
        lines = _lines_for(key, kind(value))
        assert len(lines) == 1 and lines[0].startswith(f"{key}="), (key, value, lines)


@pytest.mark.parametrize("key", sorted(k for k in ranges.RANGES if _is_float(k)))
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_float_keys_refuse_non_finite_values(key, value):
    assert _lines_for(key, value) == [f"{key}={value} must be a finite number"]


@pytest.mark.parametrize("key", sorted(ranges.CHOICES))
def test_choice_keys_refuse_other_values_in_one_line(key):
    [line] = _lines_for(key, "bogus")
    assert line.startswith(f"{key}: unknown value 'bogus'; choose from ")


@pytest.mark.parametrize("key", sorted(ranges.TEXT))
def test_text_keys_refuse_nul_and_over_long_values_in_one_line(key):
    rule = ranges.TEXT[key]
    assert _lines_for(key, "") == []
    for value in ("a\x00b", "a" * (rule.max_length + 1)):
        [line] = _lines_for(key, value)
        assert line.startswith(key) and "\n" not in line


@pytest.mark.parametrize("key", sorted(k for k, r in ranges.TEXT.items() if r.pattern.startswith("[^\\x00\\n")))
def test_one_line_text_keys_refuse_line_breaks(key):
    [line] = _lines_for(key, "runs/a\nrm -rf ~")
    assert line.startswith(f"{key}='runs/a\\nrm -rf ~' must be")


@pytest.mark.parametrize("key,value", [
    ("launch.job_name", "../../x"), ("launch.job_name", "a b"), ("launch.job_name", "-x"),
    ("launch.partition", "gpu\n#SBATCH --x"), ("launch.account", "$(id)"), ("launch.qos", "a;b"),
    ("launch.time", "4h"), ("launch.container_image", "img sqsh"),
])
def test_names_that_land_in_a_job_script_are_plain_words(key, value):
    [line] = _lines_for(key, value)
    assert line.startswith(f"{key}=")


@pytest.mark.parametrize("key,value,index", [
    ("launch.env", ["A=1", "NOT KEY=1"], 1), ("launch.env", ["A=1\nB"], 0),
    ("launch.sbatch_args", ["--exclusive", "x"], 1), ("launch.sbatch_args", ["--mem=0\nrm -rf ~"], 0),
    ("launch.container_mounts", ["/a:/b,/c:/d"], 0), ("data.crop_scale", [0.0, 1.0], 0),
    ("model.mrope_section", [2, -1, 1], 1),
])
def test_list_items_are_checked_one_by_one(key, value, index):
    [line] = _lines_for(key, value)
    assert line.startswith(f"{key}[{index}]=")


def test_list_length_is_bounded():
    [line] = _lines_for("launch.env", [f"K{i}=1" for i in range(1000)])
    assert line == "launch.env: 1000 items, more than 256"
