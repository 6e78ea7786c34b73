"""The contract of a training objective: what the trainer, `genlip plan`, `genlip eval` and
`genlip convert` ask of it. One subclass instance per objective, found through registry.py.

Model code (the math) stays in genlip_megatron/model/ and the plain-torch references in hf/; a spec
ties them to the rest of the system. Every method takes the run's Config; none sees another
objective. docs/objectives.md walks through a new objective.

The shapes a step sees (docs/batch.md): micro-batches are `PackedBatch`es; `prepare_step` turns a
step's micro-batches into the items `forward_step` and `train_flops` consume (an objective that needs
nothing more returns the batches themselves).
"""

from __future__ import annotations


class NotProvided(ValueError):
    """An objective was asked for something it does not provide; str() is one line naming both."""


class ObjectiveSpec:
    """Base class: a spec overrides what it provides; what it does not provide says so in one line."""

    description: str = ""
    presets: tuple[str, ...] = ()  # preset names (config/presets/*.yaml) of this objective
    hf_model_type: str | None = None  # `model_type` of the Hugging Face folder `convert to-hf` writes
    imports_hf: bool = False  # whether `convert from-hf` turns such a folder into a checkpoint
    export_targets: tuple[str, ...] = ()  # "hf", "timm": the `genlip convert to-*` it supports
    eval_tasks: tuple[str, ...] = ()  # eval/suite.py TASKS its evaluation model supports
    context_parallel: bool = False  # whether prepare_step/forward_step split packs over CP ranks

    def _missing(self, what: str) -> NotProvided:
        return NotProvided(f"objective {type(self).__name__} does not provide {what}")

    # -- configuration ------------------------------------------------------------------------
    def validate(self, cfg, bad: set[str]) -> list[str]:
        """Objective-specific config problems, one line each starting with the dotted key (config/
        validate.py calls it; `bad` holds keys already reported invalid, whose checks to skip)."""
        return []

    # -- model ----------------------------------------------------------------------------------
    def transformer_config(self, cfg):
        """The megatron-core TransformerConfig that DDP and the pipeline schedules see."""
        raise self._missing("a transformer config")

    def layer_spec(self, cfg):
        """The megatron-core ModuleSpec of one transformer layer (local or TE, from model.layer_spec)."""
        raise self._missing("a layer spec")

    def build_stage(self, cfg, transformer_config, *, pre_process: bool, post_process: bool, vp_stage):
        """One (virtual) pipeline stage of the model, initialised, on CPU in fp32 (the trainer casts
        and wraps it)."""
        raise self._missing("a model builder")

    # -- one training step ----------------------------------------------------------------------
    def prepare_step(self, cfg, micro_batches: list, *, split, step: int) -> list:
        """The items `forward_step` consumes, one per micro-batch of this rank (`split`: the step's
        config.step_split.StepSplit; `step`: optimizer steps taken). May use collectives over the
        data-parallel group (every rank calls it at the same point)."""
        return list(micro_batches)

    def forward_step(self, item, model):
        """megatron's forward_step_func body for one item: (output, loss_func), with loss_func(output)
        -> (loss sum, loss-token count, {"loss_sum_and_count": tensor [2]}) (per-token accounting)."""
        raise self._missing("a forward step")

    def train_flops(self, cfg, item) -> int:
        """Model FLOPs of forward + backward over one item (exact for its packed batch)."""
        raise self._missing("a FLOPs formula")

    # -- planning (launch/plan.py) ---------------------------------------------------------------
    # An objective plans through its planner module (objectives/<name>/planner.py), which provides
    # total_params(cfg, tp), step_flops(cfg, text_tokens), memory_breakdown(cfg, layout,
    # micro_batches, text_tokens), traffic(cfg, layout, text_tokens) and, when its pipeline stages
    # are unequal, stage_imbalance(cfg, layout, text_tokens). None: it cannot be planned.
    planner = None

    def _planner(self, what: str):
        if self.planner is None:
            raise self._missing(what)
        return self.planner

    def plan_params(self, cfg, tp: int = 1) -> int:
        """Parameters of the whole model (vocabulary padded for `tp`)."""
        return self._planner("a parameter count").total_params(cfg, tp)

    def plan_flops(self, cfg, text_tokens: float) -> float:
        """Model FLOPs of one optimizer step over the global batch, for samples of the configured
        image size with `text_tokens` text tokens each."""
        return self._planner("a planner FLOPs estimate").step_flops(cfg, text_tokens)

    def plan_memory(self, cfg, layout, micro_batches: int, text_tokens: float) -> dict[str, float]:
        """Bytes on the most loaded GPU of `layout` (launch/memory.Layout), by component."""
        return self._planner("a memory model").memory_breakdown(cfg, layout, micro_batches, text_tokens)

    def plan_traffic(self, cfg, layout, text_tokens: float) -> tuple[float, float]:
        """(activation elements one tensor-parallel collective moves, summed over the layers of the
        busiest pipeline stage, per micro-batch; activation elements sent between two pipeline
        stages per micro-batch)."""
        return self._planner("a communication model").traffic(cfg, layout, text_tokens)

    def plan_stage_imbalance(self, cfg, layout, text_tokens: float) -> float:
        """The busiest pipeline stage's share of the work x PP (1.0 when stages are equal; the
        planner stretches compute time by it)."""
        imbalance = getattr(self.planner, "stage_imbalance", None)
        return imbalance(cfg, layout, text_tokens) if imbalance else 1.0

    # -- evaluation (eval/) ----------------------------------------------------------------------
    def eval_model(self, state_dict: dict, cfg):
        """The single-process evaluation model (eval/'s interface: forward_packed, build_packed_inputs,
        config.patch_size, config.vocab_size) holding a FULL megatron-core state dict."""
        raise self._missing("an evaluation model")

    def random_eval_model(self, cfg, seed: int = 0):
        """The same evaluation model, randomly initialised (the 'no training' baseline)."""
        raise self._missing("a random evaluation model")

    def load_hf_eval_model(self, folder: str):
        """The evaluation model of a Hugging Face folder this objective exported."""
        raise self._missing("evaluation of its Hugging Face export")

    # -- conversion (convert/) -------------------------------------------------------------------
    def check_checkpoint(self, reader, cfg) -> None:
        """Raise ValueError (one line) when `reader`'s tensors are not those `cfg` describes."""
        raise self._missing("a checkpoint check")

    def export(self, target: str, reader, cfg, out: str, **options) -> dict:
        """Write export `target` (one of export_targets) of the checkpoint into folder `out`."""
        raise self._missing(f"an export to {target}")

    def import_hf(self, folder: str, out: str, **options) -> dict:
        """Hugging Face folder -> checkpoint folder `out` (when imports_hf)."""
        raise self._missing("an import from Hugging Face")
