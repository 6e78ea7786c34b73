"""Cross-field checks of a loaded Config, run before any process group starts.

`validate` returns every problem at once, one line each, and every line starts with the dotted key a
user has to change. Checks whose inputs are already reported invalid (a zero size, an unknown enum)
are skipped, so one mistake gives one line instead of a cascade or a ZeroDivisionError.
Like load.py, this imports neither torch nor megatron.
"""

from __future__ import annotations

from genlip_megatron.config.load import ConfigError
from genlip_megatron.config.ranges import CHOICES, key_problems  # noqa: F401 - CHOICES re-exported
from genlip_megatron.config.schema import Config
from genlip_megatron.config.step_split import StepSplit
from genlip_megatron.objectives import registry

DENSE_MASK_LIMIT = 8 * 2 ** 30  # bytes of the S x S bool mask of one micro-batch (model.attention=dense)


def _get(cfg: Config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _not_divisible(a_key: str, a: int, b_desc: str, b: int) -> str | None:
    return None if a % b == 0 else f"{a_key}={a} is not divisible by {b_desc}={b}"


def _model(cfg: Config, bad: set[str]) -> list[str]:
    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    out: list[str | None] = []
    heads_ok = not bad & {"model.num_attention_heads", "model.hidden_size"}
    if heads_ok:
        out.append(_not_divisible("model.hidden_size", m.hidden_size,
                                  "model.num_attention_heads", m.num_attention_heads))
    if heads_ok and "parallel.tensor_model_parallel_size" not in bad:
        out.append(_not_divisible("model.num_attention_heads", m.num_attention_heads,
                                  "parallel.tensor_model_parallel_size", tp))
        out.append(_not_divisible("model.ffn_hidden_size", m.ffn_hidden_size,
                                  "parallel.tensor_model_parallel_size", tp))
    if "model.objective" not in bad:  # the objective's own rules (objectives/<name>/spec.py)
        out.extend(registry.get(m.objective).validate(cfg, bad))
    # NOTE: padded vocab = a multiple of make_vocab_size_divisible_by x TP, so it splits evenly across
    # TP ranks exactly when that multiple is positive (ranges.py); the split cannot fail otherwise.
    return [line for line in out if line]


def context_split_problem(seq_length: int, cp: int, chunks: int, tp_for_sp: int = 1) -> str | None:
    """Why packed sequences of `seq_length` cannot be cut into cp x chunks equal chunks (and a rank's
    S/cp positions into tp_for_sp sequence-parallel slices), as one line; None when they can.
    The rule of data/context_split.py, here so that validation needs no torch."""
    if seq_length % (cp * chunks):
        return (f"data.seq_length={seq_length} is not divisible by parallel.context_parallel_size x "
                f"parallel.context_parallel_chunks = {cp} x {chunks}")
    if (seq_length // cp) % tp_for_sp:
        return (f"data.seq_length / parallel.context_parallel_size = {seq_length // cp} is not divisible "
                f"by parallel.tensor_model_parallel_size = {tp_for_sp} (sequence_parallel)")
    return None


def _context_parallel(cfg: Config, bad: set[str]) -> list[str]:
    """Context parallelism splits packed sequences for the fused prefix-LM attention (docs/scaling.md);
    every path without it is refused here, in one line, instead of running unsplit."""
    p, m, cp = cfg.parallel, cfg.model, cfg.parallel.context_parallel_size
    out = []
    if "model.objective" not in bad and not registry.get(m.objective).context_parallel:
        out.append(f"parallel.context_parallel_size={cp}: objective {m.objective!r} has no context "
                   "parallelism (its spec does not split packed sequences over CP ranks)")
    if m.attention != "fused":
        out.append(f"parallel.context_parallel_size={cp} needs model.attention=fused (the dense path's "
                   "S x S mask has no context parallelism)")
    if not bad & {"data.seq_length", "parallel.context_parallel_chunks", "parallel.tensor_model_parallel_size"}:
        tp_for_sp = p.tensor_model_parallel_size if p.sequence_parallel else 1
        out.append(context_split_problem(cfg.data.seq_length, cp, p.context_parallel_chunks, tp_for_sp))
    return out


def _parallel(cfg: Config, bad: set[str], world_size: int | None) -> list[str]:
    p, m, out = cfg.parallel, cfg.model, []
    if bad & {"parallel.tensor_model_parallel_size", "parallel.pipeline_model_parallel_size",
              "parallel.context_parallel_size", "parallel.virtual_pipeline_model_parallel_size"}:
        return out
    vpp = p.virtual_pipeline_model_parallel_size
    if vpp is not None and p.pipeline_model_parallel_size == 1:
        out.append(f"parallel.virtual_pipeline_model_parallel_size={vpp} needs "
                   "parallel.pipeline_model_parallel_size > 1 (set it to null)")
    elif "model.num_layers" not in bad:
        stages = p.pipeline_model_parallel_size * (vpp or 1)
        if m.num_layers % stages:
            out.append(f"model.num_layers={m.num_layers} is not divisible by "
                       f"parallel.pipeline_model_parallel_size x virtual_pipeline_model_parallel_size"
                       f" = {p.pipeline_model_parallel_size} x {vpp or 1} = {stages}")
    if p.sequence_parallel and p.tensor_model_parallel_size == 1:
        out.append("parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1")
    if p.sequence_parallel and "data.seq_length" not in bad:
        out.append(_not_divisible("data.seq_length", cfg.data.seq_length,
                                  "parallel.tensor_model_parallel_size (sequence_parallel)",
                                  p.tensor_model_parallel_size))
    if p.context_parallel_size > 1:
        out += _context_parallel(cfg, bad)
    if m.recompute == "full" and not bad & {"model.num_layers", "model.recompute_num_layers"}:
        per_chunk = m.num_layers // (p.pipeline_model_parallel_size * (vpp or 1)) or m.num_layers
        if m.recompute_num_layers > per_chunk:
            out.append(f"model.recompute_num_layers={m.recompute_num_layers} is more than the "
                       f"{per_chunk} layers of one pipeline chunk (model.num_layers={m.num_layers} / "
                       f"parallel.pipeline_model_parallel_size x virtual_pipeline_model_parallel_size)")
    if p.overlap_param_gather and not p.use_distributed_optimizer:
        out.append("parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true")
    if world_size is None:
        return [line for line in out if line]
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    if world_size <= 0:
        out.append(f"world_size={world_size} must be positive")
    elif world_size % model_parallel:
        out.append(f"world_size={world_size} is not divisible by parallel.tensor_model_parallel_size x "
                   f"pipeline_model_parallel_size x context_parallel_size = {model_parallel}")
    return [line for line in out if line]


def _batch(cfg: Config, bad: set[str], world_size: int | None) -> list[str]:
    t, p = cfg.train, cfg.parallel
    if bad & {"train.micro_batch_size", "train.global_batch_size"}:
        return []
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    if world_size is None or world_size <= 0 or model_parallel <= 0 or world_size % model_parallel:
        line = StepSplit.problem(t.global_batch_size, t.micro_batch_size, None)
        return [line] if line else []
    line = StepSplit.problem(t.global_batch_size, t.micro_batch_size, world_size // model_parallel)
    return [f"{line} (world_size {world_size} / model-parallel {model_parallel})"] if line else []


def _device(cfg: Config) -> list[str]:
    out = []
    if cfg.train.precision == "fp8" and cfg.model.layer_spec != "te":
        out.append(f"train.precision=fp8 needs model.layer_spec=te (got {cfg.model.layer_spec!r})")
    if cfg.train.device == "cpu":
        for key, value in (("model.layer_spec", "te"), ("data.decoder_device", "mixed"),
                           ("train.precision", "fp8")):
            if _get(cfg, key) == value:
                out.append(f"{key}={value} needs a GPU, but train.device=cpu")
    return out


def _data(cfg: Config, bad: set[str]) -> list[str]:
    d, m, out = cfg.data, cfg.model, []
    if d.min_pixels > d.max_pixels:
        out.append(f"data.min_pixels={d.min_pixels} is larger than data.max_pixels={d.max_pixels}")
    if "data.crop_scale" not in bad and (len(d.crop_scale) != 2 or not d.crop_scale[0] <= d.crop_scale[1]):
        out.append(f"data.crop_scale={d.crop_scale} must be [low, high] with 0 < low <= high <= 1")
    if bad & {"model.patch_size", "data.image_size", "data.max_pixels", "data.seq_length",
              "data.max_sample_tokens"}:
        return out
    mask_bytes = cfg.train.micro_batch_size * d.seq_length ** 2
    if m.attention == "dense" and mask_bytes > DENSE_MASK_LIMIT and "train.micro_batch_size" not in bad:
        out.append(f"data.seq_length={d.seq_length} with model.attention=dense needs a "
                   f"{mask_bytes / 2 ** 30:.0f} GiB S x S mask per micro-batch "
                   f"(train.micro_batch_size={cfg.train.micro_batch_size}); use model.attention=fused")
    if d.native_resolution:
        image_tokens, source = d.max_pixels // m.patch_size**2, f"data.max_pixels={d.max_pixels}"
    else:
        if d.image_size % m.patch_size:
            out.append(_not_divisible("data.image_size", d.image_size, "model.patch_size", m.patch_size))
        image_tokens, source = (d.image_size // m.patch_size) ** 2, f"data.image_size={d.image_size}"
    if d.max_sample_tokens is not None and d.max_sample_tokens > d.seq_length:
        out.append(f"data.max_sample_tokens={d.max_sample_tokens} is longer than data.seq_length={d.seq_length}: "
                   "a sample must fit one packed sequence")
    # Longer samples are cut (end text first), but the largest image must leave room for a caption.
    # The prompt's token count depends on the tokenizer; the loader enforces the exact bound.
    cap_key, cap = (("data.max_sample_tokens", d.max_sample_tokens) if d.max_sample_tokens is not None
                    else ("data.seq_length", d.seq_length))
    if cap <= image_tokens:
        out.append(f"{cap_key}={cap} is too short for one sample: {image_tokens} image tokens ({source}, "
                   f"model.patch_size={m.patch_size}) + at least one caption token, plus the prompt")
    return out


def _schedule(cfg: Config, bad: set[str]) -> list[str]:
    out, o = [], cfg.optimizer
    if o.lr < o.min_lr and not bad & {"optimizer.lr", "optimizer.min_lr"}:
        out.append(f"optimizer.lr={o.lr} is smaller than optimizer.min_lr={o.min_lr}")
    return out


def validate(cfg: Config, world_size: int | None = None) -> list[str]:
    """Every problem with `cfg`, one line each, naming the dotted key; [] when it is consistent.

    `world_size` (total processes) enables the checks that need it: the layout TP x PP x CP must
    divide it, and the global batch must split into whole micro-batches on every data-parallel rank.
    """
    problems, bad = key_problems(cfg)
    return (problems + _model(cfg, bad) + _parallel(cfg, bad, world_size) + _batch(cfg, bad, world_size)
            + _device(cfg) + _data(cfg, bad) + _schedule(cfg, bad))


def check(cfg: Config, world_size: int | None = None) -> Config:
    """Raise ConfigError listing every problem; return `cfg` unchanged when there is none."""
    problems = validate(cfg, world_size)
    if problems:
        raise ConfigError(problems)
    return cfg
