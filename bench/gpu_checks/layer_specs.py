"""The Transformer Engine layer spec against the local spec on the same weights (bf16), for both
attention paths: TE's fused LayerNorm+Linear and, with attention=dense, TE's DotProductAttention
with an arbitrary mask, against the pure-torch modules; both against the fp32 plain-torch model."""

from __future__ import annotations

import torch

from gpu_checks.context import needs_gpu, verdict

WIDTH, HEADS, LAYERS, FFN, TEXT_DIM, VOCAB = 576, 8, 4, 1536, 384, 32000  # head_dim 72, like L/16
TOLERANCE = {"te_vs_local_loss_relative": 1e-2, "vs_fp32_loss_relative": 2e-2, "mean_token_ce_abs": 5e-2}


def _config(layer_spec: str, attention: str, precision: str):
    from genlip_megatron.config.schema import Config

    cfg = Config()
    m = cfg.model
    m.hidden_size, m.num_attention_heads, m.num_layers, m.ffn_hidden_size = WIDTH, HEADS, LAYERS, FFN
    m.text_embed_dim, m.vocab_size, m.mrope_section, m.drop_path_rate = TEXT_DIM, VOCAB, [8, 12, 12], 0.0
    m.layer_spec, m.attention = layer_spec, attention
    cfg.data.seq_length, cfg.data.image_size = 2048, 224
    cfg.train.micro_batch_size = cfg.train.global_batch_size = 2
    cfg.train.device, cfg.train.precision = "cuda", precision
    return cfg


def _reference():
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    torch.manual_seed(0)
    return GenLIPModel(GenLIPConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, patch_size=16, mrope_section=[8, 12, 12],
                                    text_embed_dim=TEXT_DIM, vocab_size=VOCAB, drop_path_rate=0.0)).eval()


def _per_token_ce(cfg, reference, batch) -> torch.Tensor:
    from genlip_megatron.convert.mcore_names import hf_to_mcore, shard_for_model
    from genlip_megatron.model.genlip import GenLIPModel
    from genlip_megatron.model.transformer_config import genlip_transformer_config

    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    model = GenLIPModel(genlip_transformer_config(cfg), cfg.model, VOCAB)
    full = hf_to_mcore(reference.state_dict(), num_layers=LAYERS, num_heads=HEADS, padded_vocab=VOCAB,
                       layer_spec=cfg.model.layer_spec)
    result = model.load_state_dict(shard_for_model(full, model, 0, 1), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing:
        raise RuntimeError(f"{cfg.model.layer_spec} spec: weights not loaded for {missing[:4]}")
    model = model.to(device="cuda", dtype=dtype).eval()
    b = batch.to("cuda")
    with torch.no_grad():
        ce = model(b.tokens, b.image_patches.to(dtype), b.is_image, b.position_ids, b.segment_ids,
                   labels=b.labels, spans=b.spans, loss_mask=b.loss_mask)
    return ce.float()[b.loss_mask > 0]


def check(ctx) -> dict:
    skip = needs_gpu(ctx, te=True)
    if skip:
        return skip
    from genlip_megatron.training.batches import SyntheticBatches

    reference = _reference()
    out, ok = {}, True
    for attention in ("fused", "dense"):
        batch = SyntheticBatches(_config("local", attention, "bf16"), 0, 1).next()
        ce = {name: _per_token_ce(_config(spec, attention, precision), reference, batch)
              for name, spec, precision in (("local", "local", "bf16"), ("te", "te", "bf16"),
                                            ("local_fp32", "local", "fp32"))}
        loss = {name: float(v.mean()) for name, v in ce.items()}
        row = {"loss": loss,
               "te_vs_local_loss_relative": abs(loss["te"] - loss["local"]) / loss["local"],
               "te_vs_fp32_loss_relative": abs(loss["te"] - loss["local_fp32"]) / loss["local_fp32"],
               "local_vs_fp32_loss_relative": abs(loss["local"] - loss["local_fp32"]) / loss["local_fp32"],
               "mean_token_ce_abs": float((ce["te"] - ce["local"]).abs().mean())}
        ok &= (row["te_vs_local_loss_relative"] <= TOLERANCE["te_vs_local_loss_relative"]
               and row["te_vs_fp32_loss_relative"] <= TOLERANCE["vs_fp32_loss_relative"]
               and row["mean_token_ce_abs"] <= TOLERANCE["mean_token_ce_abs"])
        out[attention] = row
    return verdict(ok, tolerance=TOLERANCE, shape={"width": WIDTH, "layers": LAYERS, "vocab": VOCAB,
                                                   "pack": "2 x 2048 tokens"}, **out)
