"""Rank-side code of the conversion tests: train, load, save and run the megatron-core GenLIP in a pool.

The tiny model has text_embed_dim != width (so in_proj / proj exist) and a vocabulary that is not a
multiple of the padding unit (so the padded rows of embedding and lm_head must be cut on export).
"""

from __future__ import annotations

import dataclasses

import torch
from packed_batch import packed_batch

TINY = [
    "model.hidden_size=32", "model.num_layers=4", "model.num_attention_heads=4",
    "model.ffn_hidden_size=48", "model.mrope_section=[2,1,1]", "model.vocab_size=70",
    "model.make_vocab_size_divisible_by=8", "model.patch_size=4", "model.drop_path_rate=0.0",
    "model.text_embed_dim=24",
    "data.image_size=8", "data.seq_length=40", "data.max_caption_tokens=8",
    "train.micro_batch_size=1", "train.global_batch_size=2", "train.synthetic_data=true",
    "train.step_timeout_s=300", "schedule.train_iters=3", "schedule.warmup_fraction=0.0",
    "optimizer.lr=1.0e-2", "logging.log_interval=1", "logging.progress_bar=false", "checkpoint.dir=",
]
SEQ, PATCH, VOCAB = 40, 4, 70
ROWS = [[(2, 3, 7), (3, 2, 6)], [(3, 3, 9), (2, 2, 5)]]  # two sequences of (grid_h, grid_w, n_text)


def tiny_config(overrides: list[str], tp: int = 1, pp: int = 1):
    from genlip_megatron.config.load import load_config

    layout = [f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}"]
    return load_config("tiny_cpu", TINY + layout + list(overrides))


def probe_batch() -> dict:
    return packed_batch(ROWS, seq_length=SEQ, patch_dim=3 * PATCH * PATCH, vocab=VOCAB, seed=7)


class _NoData:
    """save_checkpoint asks the batch source for its state; a re-save carries none."""

    def state_dict(self) -> dict:
        return {"kind": "none"}


def train(run_dir: str, tp: int, pp: int, overrides: list[str] = ()) -> dict:
    """A few optimizer steps with the real trainer, saving at the end; returns the step losses."""
    from genlip_megatron.training.trainer import run_training

    cfg = tiny_config([f"checkpoint.dir={run_dir}", *overrides], tp, pp)
    outcome = run_training(cfg)
    return {"losses": outcome.losses, "exit_code": outcome.exit_code}


def _load_modules(path: str, tp: int, pp: int):
    from genlip_megatron.checkpoint.sharded import load_checkpoint
    from genlip_megatron.training.model_setup import build_training_modules

    cfg = tiny_config([], tp, pp)
    modules = build_training_modules(cfg)
    load_checkpoint(path, modules, None, finetune=True)
    return cfg, modules


def logits_and_features(path: str, tp: int, pp: int):
    """Load checkpoint `path` into this layout and run the probe batch forward (megatron schedule).

    Returns, from the rank holding the last stage at TP rank 0: logits [B, S, V_padded] gathered over
    TP, and features [B, S, H] after ln_post (the output of the last stage's decoder)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    _, modules = _load_modules(path, tp, pp)
    chunks = [chunk.module.eval() for chunk in modules.model]
    captured = {}
    if ps.is_pipeline_last_stage():
        chunks[-1].decoder.register_forward_hook(lambda m, i, out: captured.setdefault("features", out))
    batch = probe_batch()

    def forward_step(iterator, model):
        b = next(iterator)
        out = model(b["tokens"], b["image_patches"], b["is_image"], b["position_ids"], b["segment_ids"])
        return out, lambda logits, non_loss_data=True: gather_from_tensor_model_parallel_region(logits)

    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([batch]), model=chunks,
            num_microbatches=1, seq_length=SEQ, micro_batch_size=2, forward_only=True,
            collect_non_loss_data=True)
    if not (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0):
        return None
    return outputs[0].transpose(0, 1).clone(), captured["features"].transpose(0, 1).clone()


def load_and_resave(path: str, run_dir: str, tp: int, pp: int) -> None:
    """Load weights into this layout and save them again as a training checkpoint of this layout."""
    from genlip_megatron.checkpoint.sharded import save_checkpoint

    cfg, modules = _load_modules(path, tp, pp)
    cfg.checkpoint.dir = run_dir
    save_checkpoint(run_dir, 1, modules, _NoData(), {}, cfg)


class _Recording:
    """Wraps the synthetic source and keeps every micro-batch it hands out (as the dict of tensors the
    plain-torch reference's loss_packed reads)."""

    def __init__(self, source):
        self.source, self.seen = source, []

    def next(self):
        batch = self.source.next()
        self.seen.append(dataclasses.asdict(batch))
        return batch

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def continue_training(load: str, run_dir: str, tp: int, pp: int) -> dict:
    """checkpoint.load=<load> checkpoint.finetune=true, one step: its loss and the batches it saw."""
    from genlip_megatron.training.batches import SyntheticBatches
    from genlip_megatron.training.trainer import run_training

    cfg = tiny_config([f"checkpoint.dir={run_dir}", f"checkpoint.load={load}", "checkpoint.finetune=true",
                       "schedule.train_iters=1"], tp, pp)
    source = _Recording(SyntheticBatches(cfg, 0, 1))
    outcome = run_training(cfg, source)
    return {"losses": outcome.losses, "batches": source.seen}



def reference_hf_model(seed: int = 0):
    """A plain-torch GenLIP of the TINY trainer config with non-trivial weights (norms, LayerScale,
    biases moved off their init values)."""
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    config = GenLIPConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                          patch_size=PATCH, text_embed_dim=24, vocab_size=VOCAB, mrope_section=[2, 1, 1],
                          drop_path_rate=0.0)
    torch.manual_seed(seed)
    model = GenLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model
