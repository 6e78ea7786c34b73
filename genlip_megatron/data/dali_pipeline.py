"""The DALI image graph: encoded bytes -> decoded, cropped, resized, normalised CHW float images.

    external_source (parallel Python workers read JPEG bytes + per-sample crop window and output size)
      -> decoders.image on "mixed" (GPU: nvJPEG / hardware decoder) or "cpu" (libjpeg-turbo),
         EXIF orientation ignored (shards store upright pixels; see image_codec)
      -> resize(window -> size)   stage 1: square image_size; stage 2: native size (multiples of P)
      -> crop_mirror_normalize (mean = std = 0.5, CHW float32)
      -> pad to the batch's largest (h, w) (stage 2 only; keeps the batch dense) + true sizes

One function builds the graph for both devices; `decoder_device` is the only switch. Crop windows and
sizes are computed in Python (image_geometry) and enter as per-sample inputs, so the packer, this
graph and the reference decoder agree exactly on every image's token count.

Every DALI iteration is one micro-batch of this rank, of variable length (whole samples are packed,
so the image count varies). `items_for_iteration(k)` must be a pure function of k: the parallel
workers call it in separate processes, ahead of the consumer.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["ImageItem", "build_image_pipeline", "run_image_pipeline"]


class ImageItem(NamedTuple):
    """One image to process: encoded bytes, relative crop window (y0, x0, y1, x1), output (h, w)."""

    encoded: np.ndarray  # uint8 [bytes]
    window: tuple[float, float, float, float]
    size: tuple[int, int]


class _BatchSource:
    """Parallel external-source callback: DALI iteration -> (bytes, roi_start, roi_end, size) batches.

    NOTE: a class, not a closure, so it pickles when the workers are spawned instead of forked.
    """

    def __init__(self, items_for_iteration: Callable[[int], Sequence[ImageItem]]):
        self.items_for_iteration = items_for_iteration

    def __call__(self, iteration: int):
        items = self.items_for_iteration(iteration)
        encoded = [np.asarray(it.encoded, dtype=np.uint8) for it in items]
        roi_start = [np.array(it.window[:2], dtype=np.float32) for it in items]
        roi_end = [np.array(it.window[2:], dtype=np.float32) for it in items]
        size = [np.array(it.size, dtype=np.float32) for it in items]
        return encoded, roi_start, roi_end, size


def build_image_pipeline(
    items_for_iteration: Callable[[int], Sequence[ImageItem]],
    max_batch_size: int,
    decoder_device: str = "cpu",
    pad_to_batch: bool = False,
    num_workers: int = 2,
    num_threads: int = 2,
    antialias: bool = True,
    device_id: int | None = None,
    prefetch_queue_depth: int = 2,
    py_start_method: str = "fork",
    build: bool = True,
):
    """Define the image pipeline and (unless build=False) build it.

    Args:
        items_for_iteration: pure function, DALI iteration -> this micro-batch's images (<= max_batch_size).
        decoder_device: "cpu" or "mixed" (GPU decode; needs CUDA and a device_id).
        pad_to_batch: pad every image to the batch's largest (h, w) (variable-size stage 2).
        antialias: filter when downscaling (quality; costs ~1.5 ms per 500-px photo on CPU).
    Returns:
        a `nvidia.dali.Pipeline` with outputs (images float32 [B, 3, h, w], sizes float32 [B, 2]).
    """
    from nvidia.dali import fn, pipeline_def, types

    if decoder_device not in ("cpu", "mixed"):
        raise ValueError(f"decoder_device must be 'cpu' or 'mixed', got {decoder_device!r}")
    if decoder_device == "mixed" and device_id is None:
        device_id = 0  # mixed decoding needs a GPU; the launcher sets the local device at the edge

    @pipeline_def(enable_conditionals=False)
    def graph():
        encoded, roi_start, roi_end, size = fn.external_source(
            source=_BatchSource(items_for_iteration),
            num_outputs=4,
            batch=True,
            parallel=num_workers > 0,  # data.num_workers=0: read in the pipeline's own thread
            dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.FLOAT],
        )
        # adjust_orientation=False: pixels as stored, like the reference decoder and the stored
        # height x width (the shard build already turned EXIF-rotated images upright).
        images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB,
                                   adjust_orientation=False)
        images = fn.resize(
            images,
            size=size,
            roi_start=roi_start,
            roi_end=roi_end,
            roi_relative=True,
            interp_type=types.INTERP_LINEAR,
            antialias=antialias,
        )
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3, std=[127.5] * 3
        )
        if pad_to_batch:
            images = fn.pad(images, axes=(1, 2), fill_value=0.0)
        return images, size

    pipe = graph(
        batch_size=max_batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=0,  # nothing random inside the graph: crops come from image_geometry
        py_num_workers=max(1, num_workers),
        py_start_method=py_start_method,
        prefetch_queue_depth=prefetch_queue_depth,
        exec_dynamic=True,
    )
    if build:
        pipe.build()
    return pipe


def run_image_pipeline(pipe) -> list[np.ndarray]:
    """One iteration -> list of float32 [3, h, w] numpy images with their true (unpadded) sizes."""
    images, sizes = pipe.run()
    if hasattr(images, "as_cpu"):
        images = images.as_cpu()
    dense = np.asarray(images.as_tensor()) if images.is_dense_tensor() else None
    out = []
    for i in range(len(sizes)):
        h, w = (int(v) for v in np.asarray(sizes[i]))
        img = dense[i] if dense is not None else np.asarray(images[i])
        out.append(img[:, :h, :w])
    return out
