"""GenLIP in plain torch as a transformers `PreTrainedModel` (model_type "genlip", official weight names).

GenLIP: "Let ViT Speak" (arXiv 2605.00809). One transformer trunk reads image patches (Conv2d patch
embedding, no absolute position embedding, no CLS) followed by text tokens (embedding -> in_proj), under a
prefix-LM mask and interleaved MRoPE, and predicts the next text token (ln_post -> proj -> lm_head).

This is the single-process reference for parity tests of the megatron-core model and the class of an
exported Hugging Face folder (these files import only torch, transformers and each other).

Two entry points:
- `forward_packed` / `loss_packed`: the packed batch of docs/batch.md (several samples per sequence).
- `forward(pixel_values, input_ids, labels)`: HF style, one sample per row, built into a packed batch;
  with `use_cache` / `cache` (a transformers `Cache`; `past_key_values` is the older name) it fills a
  KV cache and continues from one, the form transformers' `generate()` drives (kv_cache.py: positions
  and masks; docs/evaluation.md).

Differences from the reference, by design:
- `in_proj` and `proj` (present only when text_embed_dim != hidden_size) carry a bias.
- the attention mask is the pure prefix-LM mask (see masks.py); attention is always torch SDPA.
- `forward` with `labels` returns the mean next-token CE over labels != -100 (HF convention), while
  `loss_packed` returns (sum, count) for exact global-batch averaging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from .configuration_genlip import GenLIPConfig
from .generation_genlip import GenLIPGenerationMixin
from .kv_cache import continuation_allowed, continuation_positions, prefill_rope_deltas, text_positions
from .layers_genlip import GenLIPEncoder, LayerScale
from .masks import prefix_lm_allowed
from .rope import interleaved_mrope_freqs

try:  # transformers >= 5 tracks which tensors were already initialised through these wrappers
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init


@dataclass
class GenLIPOutput(ModelOutput):
    """loss: scalar; logits: [B, S, V]; last_hidden_state: [B, S, W] after ln_post;
    image_features: [B, N_img, W] after ln_post at the image positions (None without images);
    cache: the KV cache after this forward (with use_cache; `past_key_values` reads it too);
    rope_deltas: int [B, 1], pass it back when continuing from the cache (kv_cache.py)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    cache: Cache | None = None
    rope_deltas: torch.Tensor | None = None


class GenLIPVisionEmbeddings(nn.Module):
    """Conv2d patch embedding (kernel = stride = patch_size, with bias)."""

    def __init__(self, config: GenLIPConfig):
        super().__init__()
        p = config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=p, stride=p)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """The conv as a linear map. patches: [N, C*P*P] in (channel, row, col) order -> [N, W]."""
        weight = self.patch_embedding.weight
        return F.linear(patches.to(weight.dtype), weight.reshape(weight.shape[0], -1), self.patch_embedding.bias)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/P)*(W/P), C*P*P], patches row-major, each in (channel, row, col) order."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class GenLIPPreTrainedModel(PreTrainedModel):
    config_class = GenLIPConfig
    base_model_prefix = "genlip"
    main_input_name = "pixel_values"
    _no_split_modules = ("GenLIPLayer",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if getattr(module, "official_xavier_init", False):
            # The official rule for q_proj (gate rows included), k_proj, v_proj and out_proj:
            # xavier-uniform with each matrix's own fans, zero bias (layers_genlip.GenLIPAttention).
            _init.xavier_uniform_(module.weight)
            _init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)
        elif isinstance(module, LayerScale):
            _init.constant_(module.lambda1, self.config.ls_init_value)


class GenLIPModel(GenLIPPreTrainedModel, GenLIPGenerationMixin):
    """GenLIP trunk + text embedding + LM head. State-dict keys match the official checkpoints.
    `generate(pixel_values=..., input_ids=prompt)` captions through transformers (generation_genlip.py)."""

    def __init__(self, config: GenLIPConfig):
        super().__init__(config)
        width, text_dim = config.hidden_size, config.text_embed_dim
        self.vision_embeddings = GenLIPVisionEmbeddings(config)
        self.visual = GenLIPEncoder(config)
        self.ln_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.embeddings = nn.Embedding(config.vocab_size, text_dim)
        self.in_proj = nn.Linear(text_dim, width) if text_dim != width else nn.Identity()
        self.proj = nn.Linear(width, text_dim) if text_dim != width else nn.Identity()
        self.lm_head = nn.Linear(text_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    # ---- packed path (docs/batch.md) -------------------------------------------------------------
    def forward_packed(
        self,
        tokens: torch.Tensor,
        image_patches: torch.Tensor | None,
        is_image: torch.Tensor,
        position_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        cache: Cache | None = None,
        allowed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            tokens: int [B, S] (0 at image/padding); image_patches: [N, C*P*P] (None or N=0 without images);
            is_image: bool [B, S]; position_ids: int [3, B, S]; segment_ids: int [B, S] (-1 = padding).
            cache: a transformers Cache the layers append their keys and values to (None: no cache).
            allowed: bool [B, 1, S, cached + S] to use instead of the prefix-LM mask of segment_ids
                (a continuation from a cache, kv_cache.py); None builds the prefix-LM mask.
        Returns:
            dict(logits [B, S, V], hidden_states [B, S, W] after ln_post, trunk [B, S, W] before ln_post).
        """
        x = self.in_proj(self.embeddings(tokens))  # [B, S, W]
        if image_patches is not None and image_patches.shape[0] > 0:
            patches = self.vision_embeddings(image_patches).to(x.dtype)  # [N, W]
            # masked_scatter fills in row-major (b, then s) order: the order of image_patches
            x = x.masked_scatter(is_image.unsqueeze(-1), patches)
        if allowed is None:
            allowed = prefix_lm_allowed(segment_ids, is_image)
        freqs = interleaved_mrope_freqs(
            position_ids, self.config.head_dim, self.config.rope_theta, self.config.mrope_section
        )
        trunk = self.visual(x, freqs, allowed, cache)
        hidden = self.ln_post(trunk)
        logits = self.lm_head(self.proj(hidden))
        return {"logits": logits, "hidden_states": hidden, "trunk": trunk}

    def loss_packed(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token CE over loss_mask positions, and their count (the trainer divides).
        `batch`: a dict of the docs/batch.md tensors or an object holding them as attributes (the
        training side's PackedBatch; duck-typed, since this file imports nothing of the project)."""
        get = batch.__getitem__ if isinstance(batch, dict) else lambda name: getattr(batch, name)
        out = self.forward_packed(
            get("tokens"), get("image_patches"), get("is_image"), get("position_ids"), get("segment_ids"),
        )
        logits = out["logits"].float()
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), get("labels").reshape(-1), ignore_index=-100, reduction="none"
        )
        mask = get("loss_mask").reshape(-1).float()
        return (ce * mask).sum(), mask.sum()

    # ---- HF path ---------------------------------------------------------------------------------
    def build_packed_inputs(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One sample per row: [image patches][text]. Images [B, C, H, W] (multiples of the patch size),
        text [B, T] (padded where attention_mask [B, T] is 0, left or right). Returns a packed batch (no labels)."""
        if pixel_values is None and input_ids is None:
            raise ValueError("need pixel_values or input_ids")
        ref = pixel_values if pixel_values is not None else input_ids
        b, device = ref.shape[0], ref.device
        n_img, patches, img_pos, text_start = 0, None, None, 0
        if pixel_values is not None:
            p = self.config.patch_size
            grid_h, grid_w = pixel_values.shape[-2] // p, pixel_values.shape[-1] // p
            patches = patchify(pixel_values, p)  # [B, n_img, C*P*P]
            n_img = patches.shape[1]
            rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
            cols = torch.arange(grid_w, device=device).repeat(grid_h)
            img_pos = torch.stack([torch.zeros_like(rows), rows, cols])  # [3, n_img]
            text_start = max(grid_h, grid_w)  # max(image position) + 1
            patches = patches.reshape(b * n_img, -1)
        n_text = input_ids.shape[1] if input_ids is not None else 0
        seq = n_img + n_text
        tokens = torch.zeros(b, seq, dtype=torch.long, device=device)
        position_ids = torch.zeros(3, b, seq, dtype=torch.long, device=device)
        segment_ids = torch.zeros(b, seq, dtype=torch.long, device=device)
        is_image = torch.zeros(b, seq, dtype=torch.bool, device=device)
        if n_img:
            is_image[:, :n_img] = True
            position_ids[:, :, :n_img] = img_pos[:, None, :]
        if n_text:
            tokens[:, n_img:] = input_ids
            position_ids[:, :, n_img:] = text_positions(n_text, text_start, attention_mask, b, device)
            if attention_mask is not None:
                segment_ids[:, n_img:] = torch.where(attention_mask.bool(), 0, -1)
        return {
            "tokens": tokens, "image_patches": patches, "is_image": is_image,
            "position_ids": position_ids, "segment_ids": segment_ids,
        }

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        rope_deltas: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> GenLIPOutput:
        """
        Args:
            pixel_values: [B, C, H, W]; input_ids: [B, T] appended after the image patches;
            attention_mask: [B, T] over input_ids (1 = real token; left or right padding); when continuing
                from a cache, over the cached text AND input_ids (transformers' convention), or a bool
                [B, 1, T, cached + T] used as is (True = may attend);
            labels: [B, T] aligned with input_ids, -100 = no loss (shifted inside, HF style);
            cache: a transformers Cache (`past_key_values` is accepted as its older name): empty (or None
                with use_cache) -> this forward fills it (prefill); non-empty -> input_ids continue the
                cached sequences (no pixel_values);
            rope_deltas: [B, 1] from the prefill's output, needed to continue unless position_ids
                ([B, T] or [3, B, T] text positions) are given.
        Returns:
            GenLIPOutput; logits [B, N_img + T, V] (prefill) or [B, T, V] (continuation).
        """
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        cached = cache.get_seq_length() if cache is not None else 0
        if use_cache and cache is None:
            cache = DynamicCache()
        if cached:
            packed, rope_deltas = self._continuation_inputs(cached, pixel_values, input_ids, attention_mask,
                                                            rope_deltas, position_ids)
        else:
            packed = self.build_packed_inputs(pixel_values, input_ids, attention_mask)
            text_start = max(pixel_values.shape[-2:]) // self.config.patch_size if pixel_values is not None else 0
            rope_deltas = prefill_rope_deltas(input_ids.shape[1] if input_ids is not None else 0, text_start,
                                              attention_mask, packed["tokens"].shape[0],
                                              packed["tokens"].shape[1], packed["tokens"].device)
        out = self.forward_packed(**packed, cache=cache)
        n_img = int(packed["is_image"][0].sum())
        loss = None
        if labels is not None:
            text_logits = out["logits"][:, n_img:-1].float()
            loss = F.cross_entropy(
                text_logits.reshape(-1, text_logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return GenLIPOutput(
            loss=loss,
            logits=out["logits"],
            last_hidden_state=out["hidden_states"],
            image_features=out["hidden_states"][:, :n_img] if n_img else None,
            cache=cache,
            rope_deltas=rope_deltas,
        )

    def _continuation_inputs(self, cached: int, pixel_values, input_ids, attention_mask, rope_deltas,
                             position_ids) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs of text tokens appended after `cached` keys, and the rope_deltas after them."""
        if pixel_values is not None or input_ids is None:
            raise ValueError("a forward that continues from a KV cache takes input_ids and no pixel_values")
        b, t = input_ids.shape
        if position_ids is None:
            if rope_deltas is None:
                raise ValueError("continuing from a KV cache needs rope_deltas (from the prefill's output) "
                                 "or explicit position_ids")
            position_ids = continuation_positions(cached, t, rope_deltas)
        elif position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        if rope_deltas is None:  # explicit positions: the next token follows the last one given
            rope_deltas = position_ids[0, :, -1:] + 1 - (cached + t)
        return {
            "tokens": input_ids, "image_patches": None,
            "is_image": torch.zeros(b, t, dtype=torch.bool, device=input_ids.device),
            "position_ids": position_ids, "segment_ids": None,
            "allowed": (attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 4
                        else continuation_allowed(cached, t, attention_mask, b, input_ids.device)),
        }, rope_deltas

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/P)*(W/P), W] trunk features after ln_post (image alone, full attention)."""
        return self.forward_packed(**self.build_packed_inputs(pixel_values))["hidden_states"]


GenLIPConfig.register_for_auto_class()
GenLIPModel.register_for_auto_class("AutoModel")
