"""Linear probe on frozen image features, and the raw-pixel baseline that every probe must beat.

Features: the trunk run on the image alone (image tokens see only image tokens, exactly as in
training), mean-pooled over patches - after ln_post by default, which is what GenLIP hands to an LLM.
Classifier: standardise, then multinomial logistic regression (sklearn, L-BFGS). The same classifier
on flattened raw pixels is the baseline: a probe at or below it means the trunk learned nothing a
linear model could not read off the pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURE_SOURCES = ("hidden_states", "trunk")  # after ln_post | last block output before ln_post


@torch.no_grad()
def patch_features(model, images: torch.Tensor, batch_size: int = 256, source: str = "hidden_states"
                   ) -> torch.Tensor:
    """float [N, 3, H, W] -> float32 [N, n_patches, W]: the model's features of each image patch,
    the image run alone (what the linear and the attentive probe read)."""
    if source not in FEATURE_SOURCES:
        raise ValueError(f"source must be one of {FEATURE_SOURCES}, got {source!r}")
    parts = []
    for start in range(0, len(images), batch_size):
        inputs = model.build_packed_inputs(images[start : start + batch_size].float())
        parts.append(model.forward_packed(**inputs)[source].float())  # the rows are all image
    return torch.cat(parts)


def image_features(model, images: torch.Tensor, batch_size: int = 256, source: str = "hidden_states"
                   ) -> np.ndarray:
    """float [N, 3, H, W] -> float32 [N, W]: mean over the image's patch features."""
    return patch_features(model, images, batch_size, source).mean(dim=1).numpy()


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 c: float = 1.0, max_iter: int = 1000) -> dict:
    """Fit on train, report top-1 on test (and train, to show under- or over-fitting)."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    classifier.fit(np.asarray(train_x, np.float64), np.asarray(train_y))
    return {
        "accuracy": float(classifier.score(np.asarray(test_x, np.float64), np.asarray(test_y))),
        "train_accuracy": float(classifier.score(np.asarray(train_x, np.float64), np.asarray(train_y))),
    }


def pixel_baseline(train_images: torch.Tensor, train_y: np.ndarray, test_images: torch.Tensor,
                   test_y: np.ndarray, c: float = 1.0, max_iter: int = 1000) -> dict:
    """The same probe on flattened pixels (one channel suffices for grey images stored as RGB)."""
    def flat(images: torch.Tensor) -> np.ndarray:
        x = images.float()
        if x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]):
            x = x[:, :1]
        return x.reshape(len(x), -1).numpy()

    return linear_probe(flat(train_images), train_y, flat(test_images), test_y, c, max_iter)
