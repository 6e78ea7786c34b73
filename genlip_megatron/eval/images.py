"""Images for evaluation, as the model saw them in training: RGB, square `image_size`, mean = std = 0.5.

Training images come out of shards as JPEGs decoded by the data path; here the same reference decoder
(`genlip_megatron.data.reference_decode`) reads an evaluation file, so a test image meets the same
resize and normalisation as a training image, after the same JPEG encoding the shard builder applies.
"""

from __future__ import annotations

import numpy as np
import torch

from genlip_megatron.data.image_codec import ImageSettings, prepare_image
from genlip_megatron.data.reference_decode import reference_process

FULL_WINDOW = (0.0, 0.0, 1.0, 1.0)  # whole image: evaluation never crops


def load_image_file(path: str, image_size: int, as_shards: bool = True) -> torch.Tensor:
    """Any image file -> float32 [3, image_size, image_size] in [-1, 1] (the stage-1 geometry).

    as_shards: first turn the bytes into the RGB JPEG `genlip shards build` would store (a PNG is
    re-encoded), so an evaluation image carries the same compression as a training image.
    """
    with open(path, "rb") as f:
        data = f.read()
    if as_shards:
        data = prepare_image(data, ImageSettings()).jpeg
    return torch.from_numpy(reference_process(data, FULL_WINDOW, (image_size, image_size)))


def to_display(image: torch.Tensor) -> np.ndarray:
    """float [3, H, W] in [-1, 1] -> uint8 [H, W, 3] for plots."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).numpy()
