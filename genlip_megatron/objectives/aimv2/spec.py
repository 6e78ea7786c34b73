"""AIMv2 as an objective spec: a prefix-attention ViT encoder and a causal multimodal decoder that
predicts the next image patch (pixel MSE) and the next caption token (CE) (docs/aimv2.md).

Where its pieces live: the megatron-core model in model/aimv2*.py, the plain-torch reference in
hf/aimv2_reference.py, name mappings and the Aimv2VisionModel export in convert/aimv2_names.py, the
Hugging Face config mapping in convert/hf_config.py; its step (prefixes, loss counts), FLOPs formula,
planner model and evaluation model next to this file.
"""

from __future__ import annotations

from genlip_megatron.config.schema import padded_vocab_size
from genlip_megatron.objectives.aimv2 import planner as aimv2_planner
from genlip_megatron.objectives.spec import ObjectiveSpec

AIMV2_PIPELINE_SIZES = (1, 2)  # PP=2: stage 0 = encoder, stage 1 = decoder


def _not_divisible(a_key: str, a: int, b_key: str, b: int) -> str | None:
    return None if a % b == 0 else f"{a_key}={a} is not divisible by {b_key}={b}"


class AIMv2Spec(ObjectiveSpec):
    description = "AIMv2: prefix ViT encoder + causal decoder, next-patch MSE + next-token CE"
    presets = ("aimv2_l14", "aimv2_h14", "aimv2_1b14", "aimv2_3b14")
    imports_hf = False  # the export holds the encoder only
    export_targets = ("hf",)
    eval_tasks = ("caption_loss", "linear_probe", "attentive_probe", "captions")
    planner = aimv2_planner  # objectives/<name>/planner.py (ObjectiveSpec's plan_* read it)

    @property
    def hf_model_type(self) -> str:
        from transformers import Aimv2VisionConfig

        return Aimv2VisionConfig.model_type

    # -- configuration ------------------------------------------------------------------------
    def validate(self, cfg, bad: set[str]) -> list[str]:
        m, p, d = cfg.model, cfg.parallel, cfg.data
        out: list[str | None] = []
        if not bad & {"model.decoder_num_attention_heads", "parallel.tensor_model_parallel_size"}:
            out.append(_not_divisible("model.decoder_num_attention_heads", m.decoder_num_attention_heads,
                                      "parallel.tensor_model_parallel_size", p.tensor_model_parallel_size))
        if not bad & {"model.decoder_hidden_size", "model.decoder_num_attention_heads"}:
            out.append(_not_divisible("model.decoder_hidden_size", m.decoder_hidden_size,
                                      "model.decoder_num_attention_heads", m.decoder_num_attention_heads))
        if p.pipeline_model_parallel_size not in AIMV2_PIPELINE_SIZES or p.virtual_pipeline_model_parallel_size:
            out.append(f"parallel.pipeline_model_parallel_size={p.pipeline_model_parallel_size} x virtual "
                       f"{p.virtual_pipeline_model_parallel_size}: AIMv2 runs PP 1 or 2 (encoder | decoder) "
                       "without virtual pipeline")
        if m.pixel_loss_weight == 0 and m.text_loss_weight == 0:
            out.append("model.pixel_loss_weight=0 and model.text_loss_weight=0: AIMv2 would train on no loss")
        if m.attention != "dense":
            out.append(f"model.attention={m.attention}: AIMv2 needs dense (the fused path is GenLIP's prefix-LM)")
        if m.aimv2_position_embedding == "learned" and (d.native_resolution or d.image_size != m.aimv2_image_size):
            out.append(f"model.aimv2_position_embedding=learned indexes a table of "
                       f"model.aimv2_image_size={m.aimv2_image_size} px images: data.image_size must equal it "
                       "and data.native_resolution be false (or use sincos)")
        return [line for line in out if line]

    # -- model ----------------------------------------------------------------------------------
    def transformer_config(self, cfg):
        from genlip_megatron.model.aimv2_specs import aimv2_transformer_configs

        return aimv2_transformer_configs(cfg)[0]

    def layer_spec(self, cfg):
        from genlip_megatron.model.aimv2_specs import aimv2_layer_spec

        return aimv2_layer_spec(cfg.model.layer_spec)

    def build_stage(self, cfg, transformer_config, *, pre_process: bool, post_process: bool, vp_stage):
        from genlip_megatron.model.aimv2 import build_aimv2_stage

        return build_aimv2_stage(cfg, transformer_config, pre_process=pre_process, post_process=post_process)

    # -- one training step ----------------------------------------------------------------------
    def prepare_step(self, cfg, micro_batches: list, *, split, step: int) -> list:
        from genlip_megatron.objectives.aimv2.step import prepare_step

        return prepare_step(micro_batches, model_cfg=cfg.model, seed=cfg.data.seed, split=split, step=step)

    def forward_step(self, item, model):
        from genlip_megatron.objectives.aimv2.step import forward_step

        return forward_step(item, model)

    def train_flops(self, cfg, item) -> int:
        from genlip_megatron.objectives.aimv2.flops import AIMv2Shape, count_tokens, train_step_flops

        padded = padded_vocab_size(cfg.model, cfg.parallel.tensor_model_parallel_size)
        return train_step_flops(AIMv2Shape.from_config(cfg.model, padded),
                                count_tokens(item.batch.spans, item.image_prefix, item.batch.loss_mask))

    # -- evaluation -----------------------------------------------------------------------------
    def eval_model(self, state_dict: dict, cfg):
        from genlip_megatron.objectives.aimv2.evaluation import model_from_mcore_state_dict

        return model_from_mcore_state_dict(state_dict, cfg.model)

    def random_eval_model(self, cfg, seed: int = 0):
        from genlip_megatron.objectives.aimv2.evaluation import random_model

        return random_model(cfg.model, seed)

    # -- conversion -----------------------------------------------------------------------------
    def check_checkpoint(self, reader, cfg) -> None:
        from genlip_megatron.objectives.aimv2.export import check_checkpoint

        check_checkpoint(reader, cfg)

    def export(self, target: str, reader, cfg, out: str, **options) -> dict:
        from genlip_megatron.objectives.aimv2.export import write_vision_folder

        return write_vision_folder(reader, cfg, out, **options)
