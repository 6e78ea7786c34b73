"""Resuming never ignores the user: the config a run resumes with is compared, key by key, with the
config the checkpoint was saved with, and a difference is refused unless the user names the key in
`checkpoint.allow_changes`; each key that may be allowed has one defined, tested meaning.

Keys that may change only when named (`checkpoint.allow_changes=[schedule.train_iters,...]`):
    schedule.*        the lr / weight-decay schedule is recomputed as a fresh run with the new
                      settings would have it, at the step reached: a longer train_iters extends the
                      schedule (warmup and decay over the new length), it does not idle at min_lr
    optimizer.*       applied from the next step (lr and min_lr through the schedule above; betas,
                      eps, weight decay and clipping set on the optimizer); Adam's moments are kept
    data.manifest     the new dataset starts its own sampler state: its order from position 0
                      (the same shards in another folder - a copy, a move - are no change: the run
                      goes on at its position without naming anything)

Keys that may differ freely, because they do not change what is trained (how it is laid out, run,
logged, checkpointed, evaluated or launched): see FREE. Everything else cannot change on resume
(the model, the tokens it reads, the seeds, the batch); start a new run from the weights instead
(checkpoint.load=<checkpoint> checkpoint.finetune=true).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genlip_megatron.checkpoint.run_dir import (
    CheckpointError,
    iteration_of,
    latest_checkpoint,
    read_run_config,
)
from genlip_megatron.config.load import ConfigError, config_to_dict

ALLOWABLE: dict[str, str] = {
    "schedule.train_iters": "schedule", "schedule.warmup_fraction": "schedule", "schedule.decay_style": "schedule",
    "optimizer.lr": "schedule", "optimizer.min_lr": "schedule", "optimizer.weight_decay": "optimizer",
    "optimizer.adam_beta1": "optimizer", "optimizer.adam_beta2": "optimizer", "optimizer.adam_eps": "optimizer",
    "optimizer.clip_grad": "optimizer",
    "data.manifest": "data",
}
# Sections and keys that never change what is trained.
FREE_SECTIONS = ("parallel", "logging", "launch")
FREE: frozenset[str] = frozenset({
    "checkpoint.dir", "checkpoint.save_interval", "checkpoint.keep_last", "checkpoint.async_save",
    "checkpoint.load", "checkpoint.finetune", "checkpoint.allow_changes",
    "train.micro_batch_size",  # the global batch, and so the loss and gradient, stay the same
    "train.device", "train.step_timeout_s", "train.max_consecutive_nan_steps",
    "train.eval_interval", "train.eval_iters", "train.eval_labelled_images",
    "data.eval_manifest", "data.eval_labelled", "data.eval_zero_shot", "data.eval_probe_train",
    "data.num_workers", "data.num_threads", "data.decoder_device",
    "data.max_bad_fraction",  # when to give up on bad samples, not which samples are read
    "model.recompute", "model.recompute_num_layers", "model.attention",  # the same math, computed differently
})
FINETUNE_HINT = ("start a new run from its weights instead (checkpoint.load=<checkpoint> "
                 "checkpoint.finetune=true)")


def _flat(cfg) -> dict:
    return {f"{section}.{key}": value for section, values in config_to_dict(cfg).items()
            for key, value in values.items()}


def _free(key: str) -> bool:
    return key in FREE or key.split(".", 1)[0] in FREE_SECTIONS


def config_changes(saved, current) -> list[tuple[str, object, object]]:
    """[(key, saved value, current value)] of every key that differs and is not free to differ."""
    old, new = _flat(saved), _flat(current)
    return [(key, old.get(key), new[key]) for key in new if not _free(key) and old.get(key) != new[key]]


@dataclass
class ResumePlan:
    """What an allowed change asks the trainer to do after loading the checkpoint."""

    changes: list = field(default_factory=list)  # (key, saved, current)
    moved: list = field(default_factory=list)  # (key, saved, current): the same dataset at another path

    def touches(self, kind: str) -> bool:
        return any(ALLOWABLE[key] == kind for key, _, _ in self.changes)

    def describe(self) -> list[str]:
        return ([f"{key}: {old!r} -> {new!r}" for key, old, new in self.changes]
                + [f"{key}: {old!r} -> {new!r} (the same shards: the sampler position is kept)"
                   for key, old, new in self.moved])


def same_dataset(checkpoint: str, saved_ref: str, current_ref: str) -> bool:
    """Whether dataset `current_ref` holds the very shards the checkpoint trained on (copied or moved to
    another folder): its content id equals the one in the checkpoint's data state (or, for checkpoints
    without one, the content id of `saved_ref` when that is still readable)."""
    from genlip_megatron.checkpoint.safe_load import load_common
    from genlip_megatron.data.manifest import Manifest
    from genlip_megatron.data.shards import ShardError

    try:
        current = Manifest.load(current_ref).content_id
        data = load_common(checkpoint).get("data")
        saved = data.get("dataset") if isinstance(data, dict) else None
        if saved is None and saved_ref:
            saved = Manifest.load(saved_ref).content_id
    except (ShardError, CheckpointError):
        return False
    return saved == current


def resume_plan(saved, current, checkpoint: str) -> ResumePlan:
    """The allowed changes between the checkpoint's config and this run's; ConfigError (one line per
    problem: the key-by-key diff, then what to do) when any difference is not allowed."""
    allowed = set(current.checkpoint.allow_changes)
    never = sorted(key for key in allowed if key not in ALLOWABLE)
    if never:
        raise ConfigError([f"checkpoint.allow_changes: {key} cannot change when resuming (only "
                           f"{', '.join(ALLOWABLE)} can); {FINETUNE_HINT}" for key in never])
    changes = config_changes(saved, current)
    moved = [(key, old, new) for key, old, new in changes
             if key == "data.manifest" and old and new and same_dataset(checkpoint, old, new)]
    changes = [change for change in changes if change not in moved]
    refused = [(key, old, new) for key, old, new in changes if key not in allowed]
    if refused:
        lines = [f"resuming from {checkpoint} with a config that differs from the checkpoint's:"]
        lines += [f"  {key}: {old!r} (checkpoint) -> {new!r} (now)" for key, old, new in refused]
        allowable = [key for key, _, _ in refused if key in ALLOWABLE]
        fixed = [key for key, _, _ in refused if key not in ALLOWABLE]
        if allowable:
            names = ",".join(sorted(allowed | set(allowable)))
            lines.append(f"to resume with these values, name them: checkpoint.allow_changes=[{names}] "
                         "(what each change means: docs/training.md, 'Resume')")
        if fixed:
            lines.append(f"{', '.join(fixed)} cannot change when resuming: restore the checkpoint's value, or "
                         f"{FINETUNE_HINT}")
        raise ConfigError(lines)
    return ResumePlan(changes, moved)


def resume_source(cfg) -> tuple[str | None, bool]:
    """(checkpoint to load, weights only?): this run's own latest complete checkpoint wins over
    checkpoint.load (run_dir.latest_checkpoint falls back past a missing or partial one)."""
    own = latest_checkpoint(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
    if own:
        return own, False
    return (cfg.checkpoint.load or None), cfg.checkpoint.finetune


def resume_problems(cfg) -> list[str]:
    """What a run of `cfg` (resolved: training/run_inputs.py) would refuse when it resumes, found before
    it starts (genlip submit, genlip train --dry-run): the config diff, or a run that is already complete."""
    try:
        path, weights_only = resume_source(cfg)
        if not path or weights_only:
            return []
        resume_plan(read_run_config(path), cfg, path)
    except ConfigError as exc:
        return exc.errors
    except CheckpointError as exc:
        return [str(exc)]
    try:
        done = iteration_of(path)
    except ValueError:  # not an iter_* folder name: the trainer reads its step from the checkpoint
        return []
    if done >= cfg.schedule.train_iters:
        return [f"{path} is step {done} and schedule.train_iters={cfg.schedule.train_iters}: this run is "
                "complete, nothing to train. To train longer, raise schedule.train_iters and name it: "
                "checkpoint.allow_changes=[schedule.train_iters]"]
    return []


def apply_resume_plan(plan: ResumePlan, cfg, modules, batch_source, fresh_data_state: dict) -> None:
    """After loading the checkpoint: give each allowed change its meaning (see the module docstring).

    fresh_data_state: the batch source's state before the checkpoint was loaded (position 0)."""
    if plan.touches("schedule") or plan.touches("optimizer"):
        from genlip_megatron.training.model_setup import build_scheduler

        o = cfg.optimizer
        # The optimizer's param groups came back from the checkpoint with its lr bounds and betas.
        for group in modules.optimizer.param_groups:
            group["max_lr"], group["min_lr"] = o.lr, o.min_lr
            group["betas"], group["eps"] = (o.adam_beta1, o.adam_beta2), o.adam_eps
        modules.optimizer.config.clip_grad = o.clip_grad
        steps = modules.scheduler.num_steps
        scheduler = build_scheduler(cfg, modules.optimizer)  # the schedule a fresh run of cfg follows
        scheduler.num_steps = steps
        scheduler.step(increment=0)  # lr and weight decay of the step reached, in every param group
        modules.scheduler = scheduler
    if plan.touches("data"):
        batch_source.load_state_dict(fresh_data_state)
