"""Hostile config files and values: `genlip config` refuses each in one line naming the file (and
line) or the key, fast, with bounded memory, without running anything; the neighbour that is fine
loads. Cases: YAML itself (alias bombs, depth, duplicate keys, YAML 1.1 numbers, encodings, tags,
documents, size) and the values the issue found accepted and then crashing training."""

from __future__ import annotations

import pytest
from harness import PEAK_MB_LIMIT, Marker, run_command

pytestmark = pytest.mark.timeout(60)


def _bomb(levels: int, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# name -> (file bytes, what the one error line must contain)
REFUSED = {
    "alias_bomb": (_bomb(9).encode(), "more than 100000 values once aliases are expanded"),
    "alias_bomb_inside_a_section": (("train:\n  seed: 1\nx:\n" + "".join(
        "  " + line + "\n" for line in _bomb(8).splitlines())).encode(), "once aliases are expanded"),
    "recursive_alias": (b"model: &m {num_layers: *m}\n", "a recursive alias"),
    "flow_20000_deep": (b"train: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested deeper than 64 levels"),
    "mapping_20000_deep": (b"train: " + b"{a: " * 20000 + b"1" + b"}" * 20000 + b"\n", "nested deeper"),
    "block_100_deep": ("".join(" " * i + "a:\n" for i in range(100)).encode(), "nested deeper than 64"),
    "duplicate_key": (b"train:\n  seed: 1\n  seed: 2\n", ":3:3: duplicate key 'seed'"),
    "duplicate_section": (b"train:\n  seed: 1\ntrain:\n  seed: 2\n", ":3:1: duplicate key 'train'"),
    "duplicate_quoted_key": (b"train:\n  seed: 1\n  'seed': 2\n", "duplicate key 'seed'"),
    "octal_seed": (b"train:\n  seed: 010\n", "train.seed: expected int, got str '010' (YAML 1.1"),
    "octal_negative": (b"data:\n  seed: -010\n", "data.seed: expected int, got str '-010'"),
    "base60_timeout": (b"train:\n  step_timeout_s: 30:00\n", "train.step_timeout_s: expected float, got str '30:00'"),
    "base60_int": (b"launch:\n  signal_lead_s: 5:00\n", "launch.signal_lead_s: expected int, got str '5:00'"),
    "yes_as_bool": (b"train:\n  synthetic_data: yes\n", "train.synthetic_data: expected bool, got str 'yes'"),
    "latin1_bytes": ("data:\n  prompt: D\u00e9cris\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 17)"),
    "utf16": ("train:\n  seed: 1\n".encode("utf-16"), "not UTF-8 text"),
    "nul_character": (b"train:\n  seed: 1\x00\n", "unacceptable character"),
    "python_tag_runs_code": (None, "is not allowed"),  # filled in by the test (needs the marker)
    "set_tag": (b"train: !!set {seed}\n", "tag 'tag:yaml.org,2002:set' is not allowed"),
    "timestamp_tag": (b"train:\n  seed: !!timestamp 2024-01-01\n", "is not allowed"),
    "two_documents": (b"train:\n  seed: 1\n---\ntrain:\n  seed: 2\n", "but found another document"),
    "top_level_list": (b"- train\n", "expected a mapping of sections"),
    "two_megabytes": (b"# " + b"x" * (2 << 20) + b"\n", "larger than the 1048576 bytes"),
    "unclosed_flow": (b"model:\n  mrope_section: [2, 3\n", "expected ',' or ']'"),
    "giant_string_value": (b"train:\n  seed: '" + b"9" * 500_000 + b"'\n", "train.seed: expected int, got str"),
}
# Bodies written after `base: tiny_cpu` (a BOM, when there is one, stays first).
ACCEPTED = {
    "benign_anchor_and_merge": b"train: &t {seed: 7}\ndata: {<<: *t, num_workers: 1}\n",
    "utf8_with_bom": "\ufefftrain:\n  seed: 3\n".encode(),
    "utf8_prompt": "data:\n  prompt: D\u00e9cris l\u2019image\n".encode(),
    "hex_seed": b"train:\n  seed: 0x10\n",
    "sbatch_time_unquoted": b"launch:\n  time: 4:00:00\n",
    "exponent_lr": b"optimizer:\n  lr: 3e-4\n  min_lr: 1e-6\n",
    "quoted_leading_zero_name": b"logging:\n  wandb_run_name: '0412'\n",
}


def _config_file(tmp_path, name: str, data: bytes | None, marker: Marker) -> str:
    if data is None:  # PyYAML's unsafe loaders would run this; ours must refuse it
        data = (f"train: !!python/object/apply:exec [\"{marker.payload_source()}\"]\n").encode()
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_yaml_is_refused_in_one_line_naming_the_file(tmp_path, name):
    data, needle = REFUSED[name]
    marker = Marker(tmp_path)
    path = _config_file(tmp_path, name, data, marker)
    outcome = run_command(["config", path])
    line = outcome.refused_in_one_line(needle, code=1)
    assert path in line or line.startswith(tuple(f"{s}." for s in ("train", "data", "launch", "model")))
    assert len(line) < 400
    assert outcome.stdout == ""
    assert outcome.peak_mb < PEAK_MB_LIMIT
    assert not marker.fired


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_neighbouring_yaml_loads(tmp_path, name):
    body = ACCEPTED[name]
    bom = b"\xef\xbb\xbf" if body.startswith(b"\xef\xbb\xbf") else b""
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(bom + b"base: tiny_cpu\n" + body[len(bom):])
    outcome = run_command(["config", str(path)])
    assert outcome.code == 0, outcome.stderr


def test_yaml_numbers_read_as_yaml_1_2_and_the_saved_config_reads_back_the_same(tmp_path):
    from genlip_megatron.config.load import dump_config, load_config, parse_yaml

    assert parse_yaml("[0x10, 1e-3, 1.5, .inf, -7, 0, true, null, '010', 4:00, on, 2024-01-01]") == \
        [16, 0.001, 1.5, float("inf"), -7, 0, True, None, "010", "4:00", "on", "2024-01-01"]
    cfg = load_config("tiny_cpu", ["launch.job_name=010", "logging.wandb_run_name=4:00",
                                   "launch.partition=on", "data.prompt=yes"])
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(str(saved)) == cfg


# Values the issue found accepted, then crashing training (or worse, training on nonsense).
VALUES = {
    "negative_seed": ("train.seed=-1", "train.seed=-1 must be >= 0"),
    "twenty_digit_seed": ("train.seed=12345678901234567890", "train.seed=12345678901234567890 must be at most"),
    "negative_data_seed": ("data.seed=-5", "data.seed=-5 must be >= 0"),
    "recompute_more_layers_than_the_model": (
        ["model.recompute=full", "model.recompute_num_layers=99"], "model.recompute_num_layers=99 is more than"),
    "seq_length_1e11": ("data.seq_length=1e11", "data.seq_length: expected int, got float"),
    "seq_length_huge_int": ("data.seq_length=100000000000", "data.seq_length=100000000000 must be at most"),
    "step_timeout_microsecond": ("train.step_timeout_s=1e-6", "train.step_timeout_s=1e-06 must be >= 10"),
    "lr_infinite": ("optimizer.lr=.inf", "optimizer.lr=inf must be a finite number"),
    "lr_nan": ("optimizer.lr=.nan", "optimizer.lr=nan must be a finite number"),
    "negative_text_loss_weight": ("model.text_loss_weight=-1", "model.text_loss_weight=-1.0 must be >= 0"),
    "negative_pixel_loss_weight": ("model.pixel_loss_weight=-0.5", "model.pixel_loss_weight=-0.5 must be >= 0"),
    "prompt_of_5000_characters": ("data.prompt=" + "word " * 1000, "data.prompt: 5000 characters, more than 4096"),
    "octal_override": ("train.seed=010", "train.seed: expected int, got str '010' (YAML 1.1"),
    "deep_override": ("model.mrope_section=" + "[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
    "bomb_override": ("model.mrope_section=" + _bomb(9).replace("\n", ", ").join("{}"), "once aliases are expanded"),
    "unknown_optimizer": ("optimizer.name=sgd", "optimizer.name: removed: AdamW is the only optimizer"),
    "job_name_escapes_the_log_folder": ("launch.job_name=../../x", "launch.job_name='../../x' must be a plain name"),
    "partition_with_newline": ("launch.partition=gpu\n#SBATCH --wrap=x", "launch.partition="),
    "checkpoint_dir_with_newline": ("checkpoint.dir=runs/a\nb", "checkpoint.dir='runs/a\\nb' must be a path"),
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_hostile_config_value_is_refused_in_one_line_naming_the_key(name):
    overrides, needle = VALUES[name]
    overrides = [overrides] if isinstance(overrides, str) else overrides
    outcome = run_command(["config", "tiny_cpu", *overrides])
    line = outcome.refused_in_one_line(needle, code=1)
    assert len(line) < 400
    assert outcome.peak_mb < PEAK_MB_LIMIT


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from genlip_megatron.data.tokenizer import Tokenizer, train_bpe

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(["a photo of a bag.", "describe the image"] * 20, 300, str(path), min_frequency=1)
    return Tokenizer.from_file(str(path))


def _layout(tokenizer, *overrides):
    from genlip_megatron.config.load import load_config
    from genlip_megatron.training.batches import checked_text_layout

    cfg = load_config("tiny_cpu", list(overrides))
    return checked_text_layout(cfg, tokenizer, (cfg.data.image_size // cfg.model.patch_size) ** 2)


def test_vocabulary_smaller_than_the_datasets_tokenizer_is_refused_naming_the_key(tokenizer):
    from genlip_megatron.config.load import ConfigError

    with pytest.raises(ConfigError) as refused:
        _layout(tokenizer, f"model.vocab_size={tokenizer.vocab_size - 1}")
    assert str(refused.value).startswith(f"model.vocab_size={tokenizer.vocab_size - 1} is smaller than the "
                                         f"{tokenizer.vocab_size} tokens")
    assert _layout(tokenizer, f"model.vocab_size={tokenizer.vocab_size}").prompt_ids


def test_a_700_word_prompt_that_cannot_fit_a_sequence_is_refused_naming_the_key(tokenizer):
    from genlip_megatron.config.load import ConfigError

    long_prompt = " ".join(["describe the image"] * 233)  # 699 words, under the 4096-character cap
    with pytest.raises(ConfigError) as refused:
        _layout(tokenizer, f"model.vocab_size={tokenizer.vocab_size}", f"data.prompt={long_prompt}")
    assert str(refused.value).startswith("data.prompt is ") and "data.seq_length=" in str(refused.value)
    assert "\n" not in str(refused.value)
