"""Specification of `genlip config`: print the resolved YAML, report problems on stderr, exit 1."""

from __future__ import annotations

from genlip_megatron.cli import main
from genlip_megatron.config.load import load_config


def test_prints_resolved_yaml_that_loads_back_equal(capsys, tmp_path):
    assert main(["config", "tiny_cpu", "model.num_layers=2"]) == 0
    out = capsys.readouterr()
    (tmp_path / "printed.yaml").write_text(out.out)
    assert out.err == ""
    assert load_config(str(tmp_path / "printed.yaml")) == load_config("tiny_cpu", ["model.num_layers=2"])


def test_invalid_config_exits_1_with_one_line_per_problem_on_stderr(capsys):
    assert main(["config", "tiny_cpu", "model.hidden_size=130", "train.micro_batch_size=2", "--world-size", "3"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "model.hidden_size=130 is not divisible by model.num_attention_heads=4",
        ("train.global_batch_size=8 is not divisible by train.micro_batch_size x data-parallel size = 2 x 3 "
        "(world_size 3 / model-parallel 1)")]


def test_unknown_key_exits_1_before_printing(capsys):
    assert main(["config", "tiny_cpu", "model.num_layer=2"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip() == "unknown key 'model.num_layer' (did you mean 'model.num_layers'?)"
