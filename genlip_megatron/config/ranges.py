"""What each config key may hold, as data: one entry per key of schema.py, checked one key at a time.

    CHOICES      strings from a fixed set
    RANGES       numbers: [low, high] (either end may be open), always finite; the ceiling says why
    TEXT         free strings: a length limit and a pattern (paths hold no NUL or line break, SLURM
                 names are plain words, ...) so that nothing a launcher renders can break a script
    LIST_ITEMS   lists: a length limit and a pattern or range per item
    booleans     need no entry: the loader's type check is all they need

`key_problems(cfg)` returns one line per bad value, each starting with the dotted key. Relations
between keys (divisibility, min <= max, ...) are validate.py's. tests/config/test_ranges.py fails
when a key of the schema has no entry here, so a new key cannot skip its range.
Imports neither torch nor megatron.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from genlip_megatron.config.schema import Config
from genlip_megatron.objectives import registry


class RegisteredObjectives:
    """The objective names of objectives/registry.py, read when a config is checked (a plug-in or a
    test may register one after this module is imported)."""

    def __iter__(self):
        return iter(registry.names())

    def __contains__(self, name) -> bool:
        return name in registry.names()

    def __len__(self) -> int:
        return len(registry.names())


CHOICES: dict = {
    "model.objective": RegisteredObjectives(),
    "model.layer_spec": ("local", "te"),
    "model.attention": ("dense", "fused"),
    "model.recompute": ("none", "selective", "full"),
    "model.drop_path_schedule": ("constant", "linear"),
    "model.aimv2_position_embedding": ("learned", "sincos"),
    "optimizer.decay_params": ("all", "megatron"),
    "train.precision": ("fp32", "bf16", "fp8"),
    "train.device": ("cuda", "cpu"),
    "schedule.decay_style": ("cosine", "linear", "constant"),
    "data.decoder_device": ("cpu", "mixed"),
    "launch.launcher": ("torchrun", "srun"),
}


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    interval: bool = False  # say "must be in [low, high)" (fractions) rather than one side
    why_low: str = ""  # why the floor is there, said with a value below it
    why_high: str = ""  # why the ceiling is there, said with a value above it

    def problem(self, key: str, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key}={value} must be a finite number"
        below = value < self.low or (self.low_open and value == self.low)
        above = value > self.high or (self.high_open and value == self.high)
        if not (below or above):
            return None
        why = self.why_high if above else self.why_low
        why = f": {why}" if why else ""
        if self.interval:
            return (f"{key}={value} must be in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}{why}")
        if above:
            return f"{key}={value} must be at most {self.high:g}{why}"
        if (self.low == 0 and self.low_open) or (self.low == 1 and not self.low_open and isinstance(value, int)):
            return f"{key}={value} must be positive{why}"
        return f"{key}={value} must be >= {self.low:g}{why}"


def _count(high: float, why_high: str = "", why_low: str = "") -> Range:  # 1 .. high
    return Range(1, high, why_low=why_low, why_high=why_high)


def _amount(high: float) -> Range:  # 0 .. high
    return Range(0, high)


def _scale(high: float) -> Range:  # (0, high]
    return Range(0, high, low_open=True)


_WIDTH = _count(1 << 17)
_SEED = Range(0, 2 ** 31 - 1, why_high="seeds are offset per rank and must stay below 2**32 for numpy")
_STEPS = _count(10 ** 12)
_FRACTION = Range(0, 1, high_open=True, interval=True)
_PARALLEL = _count(1 << 16)

RANGES: dict[str, Range] = {
    "model.hidden_size": _WIDTH,
    "model.num_layers": _count(4096),
    "model.num_attention_heads": _count(4096),
    "model.ffn_hidden_size": _count(1 << 20),
    "model.patch_size": _count(1024),
    "model.num_channels": _count(64),
    "model.text_embed_dim": _WIDTH,
    "model.vocab_size": _count(1 << 24),
    "model.make_vocab_size_divisible_by": _count(
        1 << 16, why_low="the padded vocabulary is a multiple of it x parallel.tensor_model_parallel_size, "
                     "so each tensor-parallel rank holds an equal slice"),
    "model.layer_norm_eps": Range(0, 1, low_open=True),
    "model.layer_scale_init": _amount(100),
    "model.drop_path_rate": _FRACTION,
    "model.rope_theta": _scale(1e12),
    "model.init_method_std": _scale(100),
    "model.recompute_num_layers": _count(4096),
    "model.decoder_hidden_size": _WIDTH,
    "model.decoder_num_layers": _count(4096),
    "model.decoder_num_attention_heads": _count(4096),
    "model.decoder_ffn_hidden_size": _count(1 << 20),
    "model.pixel_loss_weight": _amount(1e6),
    "model.text_loss_weight": _amount(1e6),
    "model.aimv2_image_size": _count(1 << 16),
    "parallel.tensor_model_parallel_size": _PARALLEL,
    "parallel.pipeline_model_parallel_size": _PARALLEL,
    "parallel.virtual_pipeline_model_parallel_size": _PARALLEL,
    "parallel.context_parallel_size": _PARALLEL,
    "parallel.context_parallel_chunks": _count(1024),
    "data.image_size": _count(1 << 16),
    "data.min_pixels": _count(1 << 32),
    "data.max_pixels": _count(1 << 32),
    "data.seq_length": _count(1 << 20, why_high="positions and packing offsets are int32 and a packed "
                                             "sequence of more than 2**20 tokens never fits a device"),
    "data.max_caption_tokens": _count(1 << 16),
    "data.max_sample_tokens": _count(1 << 20, why_high="a sample must fit one packed sequence (data.seq_length)"),
    "data.num_workers": _amount(1024),
    "data.num_threads": _count(1024),
    "data.seed": _SEED,
    "data.max_bad_fraction": Range(0, 1, interval=True),
    "optimizer.lr": Range(0, 10, low_open=True),
    "optimizer.min_lr": _amount(10),
    "optimizer.weight_decay": _amount(10),
    "optimizer.adam_beta1": _FRACTION,
    "optimizer.adam_beta2": _FRACTION,
    "optimizer.adam_eps": Range(0, 1, low_open=True),
    "optimizer.clip_grad": _amount(1e6),
    "schedule.train_iters": _STEPS,
    "schedule.warmup_fraction": _FRACTION,
    "train.micro_batch_size": _count(1 << 16),
    "train.global_batch_size": _count(1 << 30),
    "train.seed": _SEED,
    "train.eval_interval": _STEPS,
    "train.eval_iters": _amount(10 ** 6),
    "train.eval_labelled_images": _count(10 ** 7),
    "train.max_consecutive_nan_steps": _count(10 ** 6),
    "train.step_timeout_s": Range(10, 7 * 86400, why_low="the step watchdog and the collective timeout; "
                                                      "below 10 s a healthy first step is killed"),
    "checkpoint.save_interval": _STEPS,
    "checkpoint.keep_last": _count(10 ** 6),
    "logging.log_interval": _STEPS,
    "launch.nodes": _count(1 << 17),
    "launch.gpus_per_node": _count(1024),
    "launch.cpus_per_rank": _count(4096),
    "launch.signal_lead_s": _count(86400),
    "launch.max_requeues": _amount(10 ** 5),
    "launch.master_port": Range(0, 65535, why_high="a TCP port (0 = derive from the job id)"),
}


@dataclass(frozen=True)
class Text:
    max_length: int
    pattern: str  # the whole value must match (re.fullmatch); "" is always allowed (= unset)
    says: str  # what the pattern means, for the error line

    def problem(self, key: str, value: str) -> str | None:
        if len(value) > self.max_length:
            return f"{key}: {len(value)} characters, more than {self.max_length}"
        if value and not re.fullmatch(self.pattern, value, re.DOTALL):
            return f"{key}={_quoted(value)} must be {self.says}"
        return None


def _quoted(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_PATH = Text(4096, r"[^\x00\n\r]+", "a path without NUL or line breaks")
_ONE_LINE = Text(4096, r"[^\x00\n\r]+", "one line of text without NUL")
# SLURM partition / account / qos names, comma-separated lists of them.
_SLURM_NAME = Text(256, r"[A-Za-z0-9][A-Za-z0-9._+-]*(,[A-Za-z0-9][A-Za-z0-9._+-]*)*",
                   "a SLURM name (letters, digits, . _ + -; a comma between several)")

TEXT: dict[str, Text] = {
    "data.manifest": _PATH,
    "data.eval_manifest": _PATH,
    "data.eval_labelled": _PATH,
    "data.eval_zero_shot": _PATH,
    "data.eval_probe_train": _PATH,
    "data.prompt": Text(4096, r"[^\x00]+", "text without NUL"),
    "data.end_text": Text(256, r"[^\x00]+", "text without NUL"),
    "checkpoint.dir": _PATH,
    "checkpoint.load": _PATH,
    "logging.tensorboard_dir": _PATH,
    "logging.wandb_project": Text(128, r"[^\x00\n\r]+", "one line of text"),
    "logging.wandb_run_name": Text(128, r"[^\x00\n\r]+", "one line of text"),
    "launch.time": Text(32, r"[0-9]+(-[0-9]+)?(:[0-9]+){0,2}",
                        "an sbatch time (minutes, H:MM:SS or D-HH:MM:SS)"),
    "launch.partition": _SLURM_NAME,
    "launch.account": _SLURM_NAME,
    "launch.qos": _SLURM_NAME,
    # Also a file-name stem in launch.log_dir: no slash, so it cannot name another folder.
    "launch.job_name": Text(128, r"[A-Za-z0-9][A-Za-z0-9._+-]*",
                            "a plain name (letters, digits, . _ + -; no slash or space)"),
    "launch.log_dir": _PATH,
    "launch.container_image": Text(1024, r"[^\x00\s,]+", "an image name without spaces or commas"),
    "launch.venv": _PATH,
    # NOTE: shell by design (docs/launch.md): the site's own line, run as written before the ranks.
    "launch.setup": Text(4096, r"[^\x00]+", "shell text without NUL"),
}


@dataclass(frozen=True)
class Items:
    max_items: int
    text: Text | None = None  # for lists of strings
    number: Range | None = None  # for lists of numbers

    def problems(self, key: str, values: list) -> list[str]:
        if len(values) > self.max_items:
            return [f"{key}: {len(values)} items, more than {self.max_items}"]
        rule = self.text or self.number
        found = (rule.problem(f"{key}[{i}]", v) for i, v in enumerate(values))
        return [line for line in found if line]


LIST_ITEMS: dict[str, Items] = {
    "model.mrope_section": Items(8, number=_amount(1 << 16)),  # the interleaved rule is validate.py's
    "model.decoder_mrope_section": Items(8, number=_amount(1 << 16)),
    "data.crop_scale": Items(2, number=Range(0, 1, low_open=True, interval=True)),
    # which keys is training/resume_policy.py's to say (it names the ones that can change)
    "checkpoint.allow_changes": Items(256, text=Text(128, r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*",
                                                     "a dotted config key, e.g. schedule.train_iters")),
    # pyxis takes SRC[:DST[:FLAGS]] joined by commas: no comma inside one.
    "launch.container_mounts": Items(256, text=Text(4096, r"[^\x00\n\r,]+",
                                                    "SRC[:DST[:FLAGS]] without commas or line breaks")),
    "launch.env": Items(256, text=Text(8192, r"[A-Za-z_][A-Za-z0-9_]*=[^\x00\n\r]*",
                                       "KEY=VALUE (KEY a shell variable name, VALUE one line)")),
    "launch.sbatch_args": Items(64, text=Text(1024, r"--?[A-Za-z][A-Za-z0-9-]*(=[^\x00\n\r]*)?",
                                              "an sbatch option such as --exclusive or --mem=0, one line")),
}


def _get(cfg: Config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def key_problems(cfg: Config) -> tuple[list[str], set[str]]:
    """(one line per bad value, the keys concerned) for every key of `cfg`, one key at a time."""
    problems: list[str] = []
    bad: set[str] = set()

    def note(key: str, line: str | None) -> None:
        if line:
            problems.append(line)
            bad.add(key)

    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            note(key, f"{key}: unknown value {_quoted(value)}; choose from {', '.join(choices)}")
    for key, rule in RANGES.items():
        value = _get(cfg, key)
        if value is not None:
            note(key, rule.problem(key, value))
    for key, rule in TEXT.items():
        note(key, rule.problem(key, _get(cfg, key)))
    for key, rule in LIST_ITEMS.items():
        for line in rule.problems(key, _get(cfg, key)):
            note(key, line)
    return problems, bad
