"""The linear probe separates what is linearly separable, finds nothing in random labels, and reads
features that are the mean of the trunk's patch features."""

import numpy as np
import torch
from eval_fixtures import tiny_model, toy_images

from genlip_megatron.eval.linear_probe import image_features, linear_probe, pixel_baseline


def _blobs(n, classes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    return centres[y] + rng.normal(0, 1, size=(n, dim)), y


def test_probe_on_separable_features_is_near_perfect():
    x, y = _blobs(600)
    result = linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert result["accuracy"] >= 0.98


def test_probe_on_random_labels_is_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16))
    y = rng.integers(0, 10, size=3000)
    result = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    assert abs(result["accuracy"] - 0.1) < 0.05  # 1,000 test labels: chance +- 5 standard errors


def test_pixel_baseline_reads_a_bright_quadrant():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=g)
    images = torch.rand(400, 1, 8, 8, generator=g) * 0.5 - 1
    for i, q in enumerate(labels.tolist()):  # class q lights up quadrant q
        images[i, :, (q // 2) * 4 : (q // 2) * 4 + 4, (q % 2) * 4 : (q % 2) * 4 + 4] += 1.0
    images = images.expand(-1, 3, -1, -1)
    y = labels.numpy()
    assert pixel_baseline(images[:300], y[:300], images[300:], y[300:])["accuracy"] == 1.0


def test_features_are_mean_pooled_patch_features_of_the_image_alone():
    model = tiny_model()
    images = toy_images(5)
    want = model.get_image_features(images).mean(dim=1).detach().numpy()
    np.testing.assert_allclose(image_features(model, images, batch_size=2), want, rtol=1e-5, atol=1e-6)
    assert image_features(model, images, source="trunk").shape == (5, model.config.hidden_size)
