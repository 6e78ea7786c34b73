"""Specification of config loading: presets, `base:` inheritance, dotted overrides, errors, round trip."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from genlip_megatron.config.load import ConfigError, config_to_dict, load_config, preset_names, save_config
from genlip_megatron.config.schema import Config
from genlip_megatron.config.validate import validate

PRESETS = ["genlip_l16", "genlip_so16", "genlip_g16", "genlip_l16_stage2", "genlip_so16_stage2", "genlip_g16_stage2",
           "tiny_cpu"]


def errors_of(source, *overrides) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(str(source), list(overrides))
    return info.value.errors


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# Presets ----------------------------------------------------------------------------------------

def test_every_preset_file_is_listed():
    assert set(PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_validates(name):
    assert validate(load_config(name)) == []


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_starts_with_the_command_that_runs_it(name):
    from genlip_megatron.config.load import PRESET_DIR
    head = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:6]
    assert head[0].startswith("#") and any("genlip " in line for line in head)


@pytest.mark.parametrize("name, width, depth, ffn, text_dim, section, drop_path", [
    ("genlip_l16", 1152, 24, 2752, 1024, [8, 12, 12], 0.1),
    ("genlip_so16", 1152, 27, 3072, 1152, [12, 12, 12], 0.1),
    ("genlip_g16", 1536, 40, 4096, 1024, [16, 16, 16], 0.2),
])
def test_size_presets_match_the_official_model_configs(name, width, depth, ffn, text_dim, section, drop_path):
    m = load_config(name).model
    assert (m.hidden_size, m.num_layers, m.num_attention_heads, m.ffn_hidden_size) == (width, depth, 16, ffn)
    assert (m.text_embed_dim, m.mrope_section, m.drop_path_rate) == (text_dim, section, drop_path)


def test_stage1_presets_carry_the_paper_recipe():
    cfg = load_config("genlip_l16")
    assert (cfg.optimizer.lr, cfg.optimizer.min_lr, cfg.optimizer.weight_decay) == (1e-3, 1e-6, 0.01)
    assert (cfg.optimizer.clip_grad, cfg.train.precision, cfg.data.seq_length) == (1.0, "bf16", 16384)
    assert (cfg.schedule.warmup_fraction, cfg.schedule.train_iters) == (0.007, 264000)


def test_stage2_preset_inherits_g16_and_switches_to_native_resolution():
    cfg = load_config("genlip_g16_stage2")
    assert cfg.model.hidden_size == 1536 and cfg.data.native_resolution
    assert (cfg.data.min_pixels, cfg.data.max_pixels) == (64 * 64, 512 * 512)
    assert (cfg.optimizer.lr, cfg.schedule.train_iters) == (1e-4, 12000)


def test_tiny_cpu_preset_is_a_small_cpu_model():
    cfg = load_config("tiny_cpu")
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.vocab_size) == (128, 4, 512)
    assert (cfg.train.device, cfg.train.precision, cfg.model.layer_spec) == ("cpu", "fp32", "local")
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size, cfg.model.attention) == (8, 8, "fused")


def test_unknown_preset_lists_the_presets():
    [line] = errors_of("genlip_xl16")
    assert line.startswith("no preset or YAML file named 'genlip_xl16'") and "tiny_cpu" in line


# YAML files and base: -------------------------------------------------------------------------

def test_yaml_inherits_from_a_preset_named_in_base(tmp_path):
    path = write(tmp_path, "run.yaml", "base: tiny_cpu\nmodel:\n  num_layers: 2\n")
    cfg = load_config(str(path))
    assert cfg.model.num_layers == 2 and cfg.model.hidden_size == 128


def test_base_path_is_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "parent.yaml", "base: tiny_cpu\ntrain:\n  seed: 7\n")
    child = write(tmp_path, "sub/child.yaml", "base: ../parent.yaml\ntrain:\n  eval_iters: 3\n")
    cfg = load_config(str(child))
    assert (cfg.train.seed, cfg.train.eval_iters, cfg.model.hidden_size) == (7, 3, 128)


def test_base_loop_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    [line] = errors_of(tmp_path / "a.yaml")
    assert "'base' chain loops back" in line


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path, "run.yaml", "optimizer:\n  lr: 1e-3\n  min_lr: 5E-7\n")
    assert (load_config(str(path)).optimizer.lr, load_config(str(path)).optimizer.min_lr) == (1e-3, 5e-7)


def test_wrong_type_in_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "run.yaml", "model:\n  num_layers: four\n")
    assert errors_of(path) == [f"{path}: model.num_layers: expected int, got str 'four'"]


def test_unknown_key_in_yaml_names_the_file_and_suggests(tmp_path):
    path = write(tmp_path, "run.yaml", "modle:\n  hidden_size: 8\nmodel:\n  num_layer: 4\n")
    assert errors_of(path) == [f"{path}: unknown key 'modle' (did you mean 'model'?)",
                               f"{path}: unknown key 'model.num_layer' (did you mean 'model.num_layers'?)"]


def test_a_section_that_is_not_a_mapping_is_an_error(tmp_path):
    path = write(tmp_path, "run.yaml", "model: 3\n")
    assert errors_of(path) == [f"{path}: model: expected a mapping of keys, got 3"]


# Overrides ------------------------------------------------------------------------------------

def test_overrides_apply_after_the_file():
    cfg = load_config("tiny_cpu", ["model.num_layers=2", "model.mrope_section=[2,3,3]"])
    assert cfg.model.num_layers == 2 and cfg.model.mrope_section == [2, 3, 3]


def test_null_override_clears_an_optional_int():
    cfg = load_config("tiny_cpu", ["parallel.virtual_pipeline_model_parallel_size=2",
                                   "parallel.virtual_pipeline_model_parallel_size=null"])
    assert cfg.parallel.virtual_pipeline_model_parallel_size is None


def test_float_field_accepts_ints_and_exponents_and_stores_floats():
    cfg = load_config("tiny_cpu", ["optimizer.lr=1", "optimizer.min_lr=1e-7", "data.crop_scale=[1, 1]"])
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.min_lr == 1e-7
    assert cfg.data.crop_scale == [1.0, 1.0] and all(isinstance(v, float) for v in cfg.data.crop_scale)


def test_bool_field_rejects_ints_and_int_field_rejects_bools():
    assert errors_of("tiny_cpu", "parallel.sequence_parallel=1", "model.num_layers=true") == [
        "parallel.sequence_parallel: expected bool, got int 1",
        "model.num_layers: expected int, got bool True"]


def test_int_field_rejects_floats_and_words():
    assert errors_of("tiny_cpu", "model.num_layers=4.0", "model.num_layers=four") == [
        "model.num_layers: expected int, got float 4.0", "model.num_layers: expected int, got str 'four'"]


def test_list_field_checks_every_element():
    assert errors_of("tiny_cpu", "model.mrope_section=[4,x,6]", "model.mrope_section=4") == [
        "model.mrope_section: expected list[int], got list [4, 'x', 6]",
        "model.mrope_section: expected list[int], got int 4"]


def test_optional_field_names_null_as_allowed():
    assert errors_of("tiny_cpu", "model.text_embed_dim=wide") == [
        "model.text_embed_dim: expected int or null, got str 'wide'"]


def test_string_override_keeps_the_raw_text():
    cfg = load_config("tiny_cpu", ["logging.wandb_run_name=0412", "data.manifest=", "data.prompt=a=b: c"])
    assert (cfg.logging.wandb_run_name, cfg.data.manifest, cfg.data.prompt) == ("0412", "", "a=b: c")


def test_unknown_override_key_suggests_the_closest():
    assert errors_of("tiny_cpu", "model.num_layer=4", "num_layers=4") == [
        "unknown key 'model.num_layer' (did you mean 'model.num_layers'?)",
        "unknown key 'num_layers' (did you mean 'model.num_layers'?)"]


def test_override_without_equals_sign_is_an_error():
    [line] = errors_of("tiny_cpu", "model.num_layers")
    assert line.startswith("override 'model.num_layers': expected KEY=VALUE")


def test_unparseable_override_value_is_an_error():
    [line] = errors_of("tiny_cpu", "model.mrope_section=[2,3")
    assert line.startswith("override 'model.mrope_section=[2,3': cannot parse value")


def test_all_errors_are_reported_together_one_per_line():
    with pytest.raises(ConfigError) as info:
        load_config("tiny_cpu", ["model.num_layer=4", "train.seed=x", "bad"])
    assert isinstance(info.value, ValueError)
    assert str(info.value).splitlines() == info.value.errors and len(info.value.errors) == 3


# Round trip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_saved_preset_loads_back_equal(name, tmp_path):
    cfg = load_config(name)
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(str(tmp_path / "saved.yaml")) == cfg


def test_round_trip_keeps_strings_that_look_like_other_types(tmp_path):
    cfg = load_config("tiny_cpu")
    cfg.data.prompt, cfg.logging.wandb_run_name, cfg.checkpoint.load = "1e-3", "yes", "null"
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(str(tmp_path / "saved.yaml")) == cfg


def test_config_to_dict_has_every_section_in_schema_order():
    assert list(config_to_dict(Config())) == [
        "model", "parallel", "data", "optimizer", "schedule", "train", "checkpoint", "logging", "launch"]


def test_config_package_imports_neither_torch_nor_megatron():
    code = ("import sys, genlip_megatron.config.load, genlip_megatron.config.validate, "
            "genlip_megatron.commands.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
