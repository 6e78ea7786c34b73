"""A tiny GenLIP, a word-level tokenizer and toy images shared by the evaluation tests."""

from __future__ import annotations

import torch

from genlip_megatron.hf.configuration_genlip import GenLIPConfig
from genlip_megatron.hf.modeling_genlip import GenLIPModel

WORDS = ["<end>", "describe", "the", "image", "a", "photo", "of", "an", "bag", "ankle", "boot", "shirt",
         "small", "picture", "."]


class WordTokenizer:
    """The duck type evaluation needs: encode(text) -> ids, decode(ids) -> text, end_ids."""

    def __init__(self):
        self.vocab = {w: i for i, w in enumerate(WORDS)}
        self.end_ids = [self.vocab["<end>"]]

    def encode(self, text: str) -> list[int]:
        return [self.vocab[w] for w in text.replace(".", " .").lower().split()]

    def decode(self, ids) -> str:
        return " ".join(WORDS[i] for i in ids)


def tiny_model(seed: int = 0, vocab_size: int = len(WORDS), std: float = 0.1) -> GenLIPModel:
    """width 32, 2 layers, patch 4; weights drawn wide so scores differ clearly between captions."""
    torch.manual_seed(seed)
    config = GenLIPConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          patch_size=4, vocab_size=vocab_size, mrope_section=[2, 3, 3], drop_path_rate=0.0)
    model = GenLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or "bias" in name:
                p.normal_(0.0, std if p.dim() > 1 else 0.02)
        model.lm_head.weight.mul_(10)  # sharper next-token distributions than at init
    return model


def toy_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """float [n, 3, size, size] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1
