"""Attentive probe on frozen patch features (the evaluation AIM and AIMv2 report): one learned query
cross-attends over an image's patch features (multi-head), and a linear classifier reads the pooled
vector. Unlike the linear probe on mean-pooled features it can weigh the patches, so it measures
what the trunk encodes anywhere in the image, not only in the average.

Trained here with AdamW (cosine learning rate, a fixed number of epochs, seeded init and shuffling:
the same inputs give the same number) in plain torch on CPU. Features: `linear_probe.patch_features`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class AttentivePooling(nn.Module):
    """[N, T, W] frozen features -> [N, classes] logits."""

    def __init__(self, width: int, classes: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)  # the features' scale is arbitrary
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.classifier = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.norm(features)
        pooled, _ = self.attention(self.query.expand(len(x), -1, -1), x, x, need_weights=False)
        return self.classifier(pooled[:, 0])


def _heads(width: int) -> int:
    """Heads of at least 64 channels (at most 16), dividing the width."""
    return next(h for h in range(min(16, max(1, width // 64)), 0, -1) if width % h == 0)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    hits = sum(int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / max(1, len(x))


def attentive_probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, *,
                    epochs: int = 30, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4,
                    seed: int = 0) -> dict:
    """Fit on train features [N, T, W] and labels, report top-1 on test (and train)."""
    train_x, test_x = torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float()
    labels = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    classes = int(max(labels.max(), int(np.max(test_y)))) + 1
    torch.manual_seed(seed)
    model = AttentivePooling(train_x.shape[-1], classes, _heads(train_x.shape[-1]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    order = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # callers may evaluate under no_grad; the probe itself trains
        for _ in range(epochs):
            model.train()
            for batch in torch.randperm(len(train_x), generator=order).split(batch_size):
                loss = nn.functional.cross_entropy(model(train_x[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    test_labels = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    return {"accuracy": _accuracy(model, test_x, test_labels, batch_size),
            "train_accuracy": _accuracy(model, train_x, labels, batch_size)}
