"""GenLIP as an objective spec: one transformer over [image patches][text] with a prefix-LM mask and
next-token loss on caption tokens ("Let ViT Speak", docs/model.md).

Where its pieces live: the megatron-core model in model/genlip.py (+ embeddings, layer, specs,
attention, init), the plain-torch model in hf/ (evaluation and the Hugging Face export), name
mappings in convert/mcore_names.py and convert/timm_names.py, the config mapping in
convert/hf_config.py; its forward step, FLOPs formula, planner model and evaluation model next to
this file. Heavy imports happen inside the methods, so naming the spec costs no torch import.
"""

from __future__ import annotations

from genlip_megatron.config.schema import head_dim, padded_vocab_size
from genlip_megatron.objectives.genlip import planner as genlip_planner
from genlip_megatron.objectives.spec import ObjectiveSpec


class GenLIPSpec(ObjectiveSpec):
    description = "GenLIP: one prefix-LM transformer over [image][caption], caption next-token loss"
    presets = ("tiny_cpu", "genlip_l16", "genlip_so16", "genlip_g16", "genlip_l16_stage2", "genlip_so16_stage2",
               "genlip_g16_stage2")
    imports_hf = True
    export_targets = ("hf", "timm")
    eval_tasks = ("caption_loss", "zero_shot", "linear_probe", "attentive_probe", "captions")
    planner = genlip_planner  # objectives/<name>/planner.py (ObjectiveSpec's plan_* read it)
    context_parallel = True  # data/context_split.py + model/context_attention.py

    @property
    def hf_model_type(self) -> str:
        from genlip_megatron.hf.configuration_genlip import GenLIPConfig

        return GenLIPConfig.model_type

    # -- configuration ------------------------------------------------------------------------
    def validate(self, cfg, bad: set[str]) -> list[str]:
        from genlip_megatron.hf.mrope_sections import mrope_section_problem

        m = cfg.model
        if bad & {"model.num_attention_heads", "model.hidden_size"} or m.hidden_size % m.num_attention_heads:
            return []
        # The interleaved rule reads only the H and W counts; see hf/mrope_sections.py.
        problem = mrope_section_problem(m.mrope_section, head_dim(m))
        if problem:
            return [f"model.mrope_section={m.mrope_section} {problem} "
                    f"(head_dim = {m.hidden_size}/{m.num_attention_heads})"]
        return []

    # -- model ----------------------------------------------------------------------------------
    def transformer_config(self, cfg):
        from genlip_megatron.model.transformer_config import genlip_transformer_config

        return genlip_transformer_config(cfg)

    def layer_spec(self, cfg):
        from genlip_megatron.model.specs import genlip_layer_spec

        m = cfg.model
        return genlip_layer_spec(m.layer_spec, m.attention, layer_scale_init=m.layer_scale_init,
                                 drop_path_rate=m.drop_path_rate, drop_path_schedule=m.drop_path_schedule)

    def build_stage(self, cfg, transformer_config, *, pre_process: bool, post_process: bool, vp_stage):
        from genlip_megatron.model.genlip import GenLIPModel
        from genlip_megatron.model.init import initialize_genlip

        padded = padded_vocab_size(cfg.model, cfg.parallel.tensor_model_parallel_size)
        chunk = GenLIPModel(transformer_config, cfg.model, padded, pre_process=pre_process,
                            post_process=post_process, vp_stage=vp_stage)
        initialize_genlip(chunk, cfg.train.seed)  # official init, identical at every layout
        return chunk

    # -- one training step ----------------------------------------------------------------------
    def prepare_step(self, cfg, micro_batches: list, *, split, step: int) -> list:
        from genlip_megatron.objectives.genlip.step import prepare_step

        p = cfg.parallel
        return prepare_step(micro_batches, p.context_parallel_size, p.context_parallel_chunks)

    def forward_step(self, item, model):
        from genlip_megatron.objectives.genlip.step import forward_step

        return forward_step(item, model)

    def train_flops(self, cfg, item) -> int:
        from genlip_megatron.objectives.genlip.flops import ModelShape, count_tokens, train_step_flops
        from genlip_megatron.objectives.genlip.step import whole_batch

        batch = whole_batch(item)
        padded = padded_vocab_size(cfg.model, cfg.parallel.tensor_model_parallel_size)
        return train_step_flops(ModelShape.from_config(cfg.model, padded), count_tokens(batch.spans, batch.loss_mask))

    # -- evaluation -----------------------------------------------------------------------------
    def eval_model(self, state_dict: dict, cfg):
        from genlip_megatron.objectives.genlip.evaluation import model_from_mcore_state_dict

        return model_from_mcore_state_dict(state_dict, cfg.model)

    def random_eval_model(self, cfg, seed: int = 0):
        from genlip_megatron.objectives.genlip.evaluation import random_model

        return random_model(cfg.model, seed)

    def load_hf_eval_model(self, folder: str):
        from genlip_megatron.objectives.genlip.evaluation import load_hf_folder

        return load_hf_folder(folder)

    # -- conversion -----------------------------------------------------------------------------
    def check_checkpoint(self, reader, cfg) -> None:
        from genlip_megatron.convert.to_hf import check_matches

        check_matches(reader, cfg)

    def export(self, target: str, reader, cfg, out: str, **options) -> dict:
        if target == "hf":
            from genlip_megatron.convert.to_hf import write_hf_folder

            return write_hf_folder(reader, cfg, out, **options)
        from genlip_megatron.convert.to_timm import trunk_from_checkpoint, write_timm_folder

        config, tensors = trunk_from_checkpoint(reader, cfg)
        return write_timm_folder(reader.folder, config, tensors, out, **options)

    def import_hf(self, folder: str, out: str, **options) -> dict:
        from genlip_megatron.convert.from_hf import import_from_hf

        return import_from_hf(folder, out, **options)
