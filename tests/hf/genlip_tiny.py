"""Tiny GenLIP configs and a hand-built packed batch (docs/batch.md) shared by the tests in tests/hf."""

from __future__ import annotations

import torch

from genlip_megatron.hf.configuration_genlip import GenLIPConfig
from genlip_megatron.hf.modeling_genlip import GenLIPModel

VOCAB = 97
PATCH = 4


def tiny_config(**overrides) -> GenLIPConfig:
    """width 64, 2 layers, 4 heads (head_dim 16, 8 frequencies: section (2, 3, 3) uses all three axes)."""
    kwargs = {
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
        "patch_size": PATCH, "text_embed_dim": 48, "vocab_size": VOCAB, "mrope_section": [2, 3, 3],
        "drop_path_rate": 0.0,
    }
    return GenLIPConfig(**(kwargs | overrides))


def tiny_model(seed: int = 0, **overrides) -> GenLIPModel:
    """fp32, eval mode, weights drawn with a large std so every path (gate, LayerScale) matters."""
    torch.manual_seed(seed)
    model = GenLIPModel(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith(("norm1.weight", "norm2.weight")) else 0.0, 0.1)
    return model


def pack(samples: list[dict], seq_length: int) -> dict[str, torch.Tensor]:
    """Pack samples into one sequence of length seq_length, exactly as docs/batch.md specifies.

    Each sample: {"pixels": [C, H, W] or None, "text": int [T]}. Returns a batch with B = 1.
    """
    tokens = torch.zeros(1, seq_length, dtype=torch.long)
    is_image = torch.zeros(1, seq_length, dtype=torch.bool)
    positions = torch.zeros(3, 1, seq_length, dtype=torch.long)
    segment_ids = torch.full((1, seq_length), -1, dtype=torch.long)
    labels = torch.full((1, seq_length), -100, dtype=torch.long)
    loss_mask = torch.zeros(1, seq_length)
    patches, s = [], 0
    for index, sample in enumerate(samples):
        start, next_pos = s, 0
        if sample["pixels"] is not None:
            _, h, w = sample["pixels"].shape
            gh, gw = h // PATCH, w // PATCH
            for row in range(gh):
                for col in range(gw):
                    patches.append(sample["pixels"][:, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH]
                                   .reshape(-1))
                    is_image[0, s] = True
                    positions[:, 0, s] = torch.tensor([0, row, col])
                    s += 1
            next_pos = max(gh, gw)
        for j, tok in enumerate(sample["text"].tolist()):
            tokens[0, s] = tok
            positions[:, 0, s] = next_pos + j
            if j + 1 < len(sample["text"]):
                labels[0, s] = int(sample["text"][j + 1])
                loss_mask[0, s] = 1.0
            s += 1
        segment_ids[0, start:s] = index
    assert s <= seq_length
    return {
        "tokens": tokens, "image_patches": torch.stack(patches) if patches else torch.zeros(0, 3 * PATCH * PATCH),
        "is_image": is_image, "position_ids": positions, "segment_ids": segment_ids, "labels": labels,
        "loss_mask": loss_mask,
    }


def packed_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("tokens", "image_patches", "is_image", "position_ids", "segment_ids")}


def three_samples() -> list[dict]:
    """Three samples of different image grids and caption lengths."""
    g = torch.Generator().manual_seed(1)
    return [
        {"pixels": torch.randn(3, 8, 12, generator=g), "text": torch.randint(1, VOCAB, (5,), generator=g)},
        {"pixels": torch.randn(3, 12, 4, generator=g), "text": torch.randint(1, VOCAB, (3,), generator=g)},
        {"pixels": torch.randn(3, 8, 8, generator=g), "text": torch.randint(1, VOCAB, (7,), generator=g)},
    ]
