"""GenLIP's input embedding: image patches and text tokens into one [S, B, H] stream.

Image: the official Conv2d(patch, stride=patch, bias) is applied as a Linear on pre-cut patch rows
(`image_patches`, docs/batch.md), which handles any mix of image sizes in a pack. Text: a
vocab-parallel embedding (text_embed_dim wide) followed by `in_proj` to the trunk width when the two
differ. Both are scattered into their positions; with sequence parallelism the full stream is then
split along the sequence across the tensor-parallel ranks.
"""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule


class GenLIPEmbedding(MegatronModule):
    def __init__(self, config, *, patch_dim: int, vocab_size: int, text_embed_dim: int):
        super().__init__(config=config)
        hidden = config.hidden_size
        self.patch_embedding = torch.nn.Linear(patch_dim, hidden, bias=True)
        self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
            num_embeddings=vocab_size, embedding_dim=text_embed_dim,
            init_method=config.init_method, config=config, reduce_scatter_embeddings=False,
        )
        self.in_proj = (torch.nn.Linear(text_embed_dim, hidden, bias=True)
                        if text_embed_dim != hidden else None)
        with torch.no_grad():
            config.init_method(self.patch_embedding.weight)
            self.patch_embedding.bias.zero_()
            if self.in_proj is not None:
                config.init_method(self.in_proj.weight)
                self.in_proj.bias.zero_()

    def forward(self, tokens, image_patches, is_image):
        """tokens [B, S], image_patches [N, patch_dim], is_image [B, S] -> [S, B, H] (or [S/tp, B, H])."""
        text = self.word_embeddings(tokens)  # [B, S, E], summed over TP ranks
        if self.in_proj is not None:
            text = self.in_proj(text)
        image = self.patch_embedding(image_patches.to(text.dtype))  # [N, H]
        placed = torch.zeros_like(text).masked_scatter(is_image.unsqueeze(-1), image)
        # torch.where (not addition) so image positions send no gradient to token 0's embedding.
        x = torch.where(is_image.unsqueeze(-1), placed, text).transpose(0, 1).contiguous()
        if self.config.sequence_parallel:
            x = tensor_parallel.scatter_to_sequence_parallel_region(x)
        return x
