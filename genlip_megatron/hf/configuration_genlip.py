"""Hugging Face configuration of GenLIP (model_type "genlip").

GenLIP: "Let ViT Speak" (arXiv 2605.00809). The keys and their meaning follow the official config.json
of github YanFangCS/GenLIP, so an official checkpoint folder loads into `GenLIPModel` unchanged.

Differences from the reference, by design:
- `rope_scaling` ({"type": "mrope", "mrope_section": [T, H, W]}) is kept as a plain dict and parsed here
  into `mrope_section`; it is NOT handed to transformers' RoPE standardisation (transformers >= 5 turns
  `rope_scaling` into `rope_parameters` and would validate "mrope" against its own rope types).
  `to_dict` writes it back under its official name.
- `mrope_section` may also be passed directly (it wins over `rope_scaling`).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class GenLIPConfig(PretrainedConfig):
    """One trunk for image patches and text tokens. Defaults: the official L/16 trunk (width 1152, head_dim 72);
    text_embed_dim defaults to the width, as in the official class."""

    model_type = "genlip"

    def __init__(
        self,
        hidden_size: int = 1152,
        intermediate_size: int = 2752,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_act: str = "silu",
        use_swiglu_ffn: bool = True,
        ls_init_value: float = 0.1,
        drop_path_rate: float = 0.1,
        drop_path_schedule: str = "constant",
        gated_attention: bool = True,
        mrope_interleaved: bool = True,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        mrope_section: list[int] | None = None,
        text_embed_dim: int | None = None,
        vocab_size: int = 151936,
        layer_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        # NOTE: popped so transformers >= 5 does not route them through its RoPE standardisation.
        kwargs.pop("rope_parameters", None)
        if mrope_section is None:
            mrope_section = (rope_scaling or {}).get("mrope_section", [8, 12, 12])
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_act = hidden_act
        self.use_swiglu_ffn = use_swiglu_ffn
        self.ls_init_value = ls_init_value
        self.drop_path_rate = drop_path_rate
        # Not an official key: the official model drops with drop_path_rate in every layer
        # ("constant"); "linear" ramps it from 0 at the first layer (a run's model.drop_path_schedule).
        self.drop_path_schedule = drop_path_schedule
        self.gated_attention = gated_attention
        self.mrope_interleaved = mrope_interleaved
        self.rope_theta = rope_theta
        self.mrope_section = [int(s) for s in mrope_section]
        self.text_embed_dim = hidden_size if text_embed_dim is None else text_embed_dim
        self.vocab_size = vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self._check()
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _check(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")
        if len(self.mrope_section) != 3:
            raise ValueError(f"mrope_section must be (T, H, W), got {self.mrope_section}")
        unsupported = {
            "hidden_act": self.hidden_act == "silu",
            "use_swiglu_ffn": self.use_swiglu_ffn,
            "gated_attention": self.gated_attention,
            "mrope_interleaved": self.mrope_interleaved,
        }
        if self.drop_path_schedule not in ("constant", "linear"):
            raise ValueError(f"drop_path_schedule must be 'constant' or 'linear', got {self.drop_path_schedule!r}")
        bad = [k for k, ok in unsupported.items() if not ok]
        if bad:
            raise ValueError(f"only the GenLIP architecture is implemented; unsupported settings: {bad}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_scaling(self) -> dict:  # official key; read-only view of mrope_section
        return {"type": "mrope", "mrope_section": list(self.mrope_section)}

    @rope_scaling.setter
    def rope_scaling(self, value: dict | None) -> None:
        if value is not None and "mrope_section" in value:
            self.mrope_section = [int(s) for s in value["mrope_section"]]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("mrope_section", None)
        out.pop("rope_parameters", None)
        out["rope_scaling"] = self.rope_scaling
        return out
