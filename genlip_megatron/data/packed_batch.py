"""The packed micro-batch: the one contract between the data path and the models (docs/batch.md).

Built once, by `data.packing.pack_sequences`, for the trainer (both batch sources) and evaluation.
Plain torch: the data path, the objectives and the trainer share it without importing a model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class PackedBatch:
    """B packed sequences of S tokens; K samples in all; N image patches in all (P = patch size).

    Each sequence holds whole samples one after another, `[image patches][prompt][caption][end]`,
    then padding to S.

    Attributes:
        tokens: int64 [B, S]. Text token ids; 0 at image and padding positions.
        image_patches: float32 [N, C*P*P]. Pixels of every image patch, in sequence order (b-major),
            each patch in (channel, row, col) order, normalised to [-1, 1].
        is_image: bool [B, S]. True at image-patch positions; is_image.sum() == N.
        position_ids: int64 [3, B, S]. MRoPE (t, h, w): image patch (0, row, col); text the same
            value on all three axes, from max(image position) + 1 of its sample; padding 0.
        segment_ids: int32 [B, S]. Index of the sample inside its sequence (0, 1, ...); -1 at padding.
        labels: int64 [B, S]. Next-token target of each position; -100 where there is none.
        loss_mask: float32 [B, S]. 1.0 where the position carries caption loss.
        spans: int64 [K, 3]. Per sample, in sequence order: (start, text start, end) as offsets into
            the flattened [B * S] token stream; the sample's image patches are [start, text start),
            its text [text start, end). What the attention kernels, the FLOPs count and the
            objectives' per-sample draws read, instead of re-deriving samples from segment_ids.
    """

    tokens: torch.Tensor
    image_patches: torch.Tensor
    is_image: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    spans: torch.Tensor

    @property
    def micro_batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_length(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_samples(self) -> int:
        return self.spans.shape[0]

    def sample_lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image tokens, text tokens) per sample, int64 [K] each."""
        start, text_start, end = self.spans.unbind(1)
        return text_start - start, end - text_start

    def to(self, device, non_blocking: bool = True) -> PackedBatch:
        """The same batch with every tensor on `device`."""
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self)})
