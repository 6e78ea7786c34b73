"""One owner for each piece of shared knowledge (docs/objectives.md): a search of the source tree (not
tests, not docs) finds the run directory's names, the step-boundary arithmetic and the objective names
each in one module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("genlip_megatron", "launch", "data_tools", "bench") for p in (REPO / folder).rglob("*")
           if p.is_file() and p.suffix in (".py", ".sh", ".sbatch", ".yaml") and "presets" not in p.parts]


def _modules_matching(pattern: str) -> set[str]:
    regex = re.compile(pattern)
    return {str(p.relative_to(REPO)) for p in SOURCES if regex.search(p.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("what, pattern, owner", [
    ("the `latest` marker's name", r"""["']latest["']""", "genlip_megatron/checkpoint/run_dir.py"),
    ("the run config's file name", r"config\.yaml", "genlip_megatron/checkpoint/run_dir.py"),
    ("the metrics file's name", r"""["']metrics\.jsonl["']""", "genlip_megatron/checkpoint/run_dir.py"),
    ("global batch -> micro-batches per rank", r"global_batch_size\s*(//|%)|//\s*\(\w*\.?micro_batch_size",
     "genlip_megatron/config/step_split.py"),
    ("the name of the AIMv2 objective", r"""["']aimv2["']""", "genlip_megatron/objectives/registry.py"),
])
def test_found_in_one_module_only(what, pattern, owner):
    assert _modules_matching(pattern) == {owner}, what


def test_the_genlip_objective_name_is_the_registrys_and_the_other_genlips_are_other_names():
    # The same word names the product's command (`genlip`), the default SLURM job and the Hugging
    # Face model_type of GenLIP's export (a file-format name transformers reads): none is an
    # objective name, and none decides an objective.
    other_names = {"genlip_megatron/cli.py",  # prog="genlip"
                   "genlip_megatron/config/schema.py",  # launch.job_name default
                   "genlip_megatron/hf/configuration_genlip.py",  # model_type of the HF export
                   "genlip_megatron/hf/modeling_genlip.py"}  # its base_model_prefix
    assert _modules_matching(r"""["']genlip["']""") == {"genlip_megatron/objectives/registry.py"} | other_names


def test_no_module_chooses_by_objective_name_or_by_sniffing_batch_keys():
    assert _modules_matching(r"objective\s*(==|!=|in)\s*") == set()
    assert _modules_matching(r"""["']image_prefix["']\s+in\b""") == set()
