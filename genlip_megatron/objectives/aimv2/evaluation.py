"""AIMv2's evaluation model: the plain-torch reference (hf/aimv2_reference.py) seen through the
interface evaluation uses (eval/: `forward_packed`, `build_packed_inputs`, `config.patch_size`,
`config.vocab_size`). Every patch is in the prefix (full bidirectional encoder attention, as for
downstream use); `hidden_states` are the encoder's features after its final RMSNorm (what the probes
read and what the Aimv2VisionModel export returns); `logits` are the decoder's text head, so caption
log-likelihoods, the held-out caption loss and greedy captions read them as for GenLIP.
"""

from __future__ import annotations

import dataclasses

import torch

from genlip_megatron.convert.aimv2_names import mcore_to_reference, reference_config
from genlip_megatron.eval.sequences import image_inputs
from genlip_megatron.hf.aimv2_reference import AIMv2Reference, AIMv2ReferenceConfig


class AIMv2EvalModel(torch.nn.Module):
    def __init__(self, config: AIMv2ReferenceConfig):
        super().__init__()
        self.config = config
        self.reference = AIMv2Reference(config)

    @torch.no_grad()
    def forward_packed(self, tokens, image_patches, is_image, position_ids, segment_ids) -> dict:
        """-> {"hidden_states": [B, S, W] encoder features, "logits": [B, S, V] or None for rows that
        hold no text (image-only rows need no decoder)}."""
        if bool(is_image.all()):
            features = self.reference.vision(image_patches, is_image, position_ids, segment_ids, is_image)
            return {"hidden_states": features, "logits": None}
        out = self.reference.forward_packed(tokens, image_patches, is_image, position_ids, segment_ids, is_image)
        return {"hidden_states": out["features"], "logits": out["logits"]}

    def build_packed_inputs(self, pixel_values: torch.Tensor) -> dict:
        return image_inputs(pixel_values, self.config.patch_size)


def random_model(model_cfg, seed: int = 0) -> AIMv2EvalModel:
    torch.manual_seed(seed)
    return AIMv2EvalModel(reference_config(model_cfg)).eval()


def model_from_mcore_state_dict(state_dict: dict, model_cfg) -> AIMv2EvalModel:
    """The evaluation model holding a FULL megatron-core AIMv2 state dict."""
    m = model_cfg
    tensors = {k: v.float() for k, v in state_dict.items() if not k.endswith("_extra_state")}
    ref = mcore_to_reference(tensors, num_layers=m.num_layers, num_heads=m.num_attention_heads,
                             decoder_num_layers=m.decoder_num_layers,
                             decoder_num_heads=m.decoder_num_attention_heads, vocab_size=m.vocab_size,
                             patch_size=m.patch_size, num_channels=m.num_channels, layer_spec=m.layer_spec)
    model = AIMv2EvalModel(dataclasses.replace(reference_config(m)))
    missing, unexpected = model.reference.load_state_dict(ref, strict=False)
    if missing or unexpected:
        raise ValueError(f"mcore -> AIMv2 reference weights do not fit: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()
