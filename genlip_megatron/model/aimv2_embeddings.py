"""AIMv2's encoder input: image patches gathered out of the packed stream and embedded.

The encoder sees only image patches. `compact_images` moves each row's image patches to the front
of a shorter [B, Si] stream (Si = the most image patches in a row, rounded up to a multiple of the
tensor-parallel size so sequence parallelism can split it), keeping their order, their sample id and
their prefix flag; the text positions of the packed sequence never enter the encoder.
`AIMv2PatchEmbedding` is the conv (as a Linear on patch rows, docs/batch.md) + RMSNorm + absolute
position embedding (a learned table indexed row * grid + col, or the 2-D sin-cos of native resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.transformer.module import MegatronModule

from genlip_megatron.hf.aimv2_reference import sincos_position_embedding


@dataclass
class CompactImages:
    """Image patches of a packed micro-batch, moved to the front of each row.

    index: int64 [B, Si], the packed position each compact slot comes from (valid slots only);
    valid: bool [B, Si]; segment_ids: int [B, Si] (-1 at invalid slots); prefix: bool [B, Si];
    rows, cols: int64 [B, Si], the patch's grid position (0 at invalid slots).
    """

    index: torch.Tensor
    valid: torch.Tensor
    segment_ids: torch.Tensor
    prefix: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


def compact_images(is_image, segment_ids, position_ids, image_prefix, multiple: int) -> CompactImages:
    """is_image, image_prefix bool [B, S]; segment_ids [B, S]; position_ids [3, B, S]."""
    counts = is_image.sum(1)
    length = max(int(counts.max()), 1)
    length = -(-length // multiple) * multiple
    # A stable sort on "not image" puts each row's image positions first, in sequence order.
    index = torch.sort((~is_image).to(torch.int8), dim=1, stable=True).indices
    index = torch.nn.functional.pad(index, (0, max(length - index.shape[1], 0)))[:, :length]
    valid = torch.arange(length, device=is_image.device)[None, :] < counts[:, None]

    def take(t):
        return t.gather(1, index)

    return CompactImages(index=index, valid=valid,
                         segment_ids=take(segment_ids).masked_fill(~valid, -1),
                         prefix=take(image_prefix) & valid,
                         rows=take(position_ids[1]) * valid, cols=take(position_ids[2]) * valid)


class AIMv2PatchEmbedding(MegatronModule):
    """patch rows [B, Si, 3*P*P] -> [B, Si, W] = RMSNorm(Linear(patch)) + position embedding.

    NOTE: a plain torch RMSNorm (not megatron's): it runs on the full, replicated stream before the
    sequence-parallel split, so its gradient is already complete on every rank and must not be
    summed over TP ranks (megatron marks its own norms for that sum).
    """

    def __init__(self, config, *, patch_dim: int, position_embedding: str, grid: int, eps: float):
        super().__init__(config=config)
        hidden = config.hidden_size
        self.patch_embedding = torch.nn.Linear(patch_dim, hidden, bias=True)
        self.rms_norm = torch.nn.RMSNorm(hidden, eps=eps)
        self.kind, self.grid = position_embedding, grid
        if position_embedding == "learned":
            self.position_embedding = torch.nn.Embedding(grid * grid, hidden)
        elif position_embedding != "sincos":
            raise ValueError(f"model.aimv2_position_embedding: {position_embedding!r} is not "
                             "'learned' or 'sincos'")
        with torch.no_grad():
            config.init_method(self.patch_embedding.weight)
            self.patch_embedding.bias.zero_()
            if position_embedding == "learned":
                config.init_method(self.position_embedding.weight)

    def forward(self, patches, rows, cols):
        x = self.rms_norm(self.patch_embedding(patches))
        if self.kind == "learned":
            if int(rows.max()) >= self.grid or int(cols.max()) >= self.grid:
                raise ValueError(f"an image is larger than the learned {self.grid} x {self.grid} "
                                 "position table (model.aimv2_image_size); use 'sincos'")
            return x + self.position_embedding(rows * self.grid + cols)
        pos = sincos_position_embedding(rows.reshape(-1), cols.reshape(-1), x.shape[-1])
        return x + pos.reshape(x.shape).to(x.dtype)
