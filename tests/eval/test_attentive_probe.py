"""The attentive probe finds a class signal that sits in one patch of many (where mean pooling dilutes
it), finds nothing in random labels, and gives the same number twice."""

import numpy as np
import torch

from genlip_megatron.eval.attentive_probe import attentive_probe
from genlip_megatron.eval.linear_probe import linear_probe


def _marked(n, classes=4, tokens=24, width=16, seed=0):
    """Noise patches; one patch per image, at a random place, carries a marker (dim 0) and the class
    (one-hot in dims 1..classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tokens, width, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    where = torch.randint(0, tokens, (n,), generator=g)
    x[torch.arange(n), where, 0] += 6.0
    x[torch.arange(n), where, 1 + y] += 4.0
    return x, y.numpy()


def test_attentive_probe_reads_one_patch_that_mean_pooling_dilutes():
    x, y = _marked(1200)
    attentive = attentive_probe(x[:800], y[:800], x[800:], y[800:], epochs=20, lr=3e-3, batch_size=64)
    mean_pooled = linear_probe(x[:800].mean(1).numpy(), y[:800], x[800:].mean(1).numpy(), y[800:])
    assert attentive["accuracy"] > 0.9, attentive
    assert attentive["accuracy"] > mean_pooled["accuracy"] + 0.2, (attentive, mean_pooled)


def test_attentive_probe_on_random_labels_is_near_chance_and_deterministic():
    x, _ = _marked(600, seed=1)
    y = np.random.default_rng(0).integers(0, 4, size=600)
    first = attentive_probe(x[:400], y[:400], x[400:], y[400:], epochs=5)
    assert first["accuracy"] < 0.4
    assert attentive_probe(x[:400], y[:400], x[400:], y[400:], epochs=5) == first
