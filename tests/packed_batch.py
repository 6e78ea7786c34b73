"""Hand-built packed micro-batches (docs/batch.md) for model tests, independent of the data path."""

from __future__ import annotations

import torch


def packed_batch(rows, *, seq_length: int, patch_dim: int, vocab: int, seed: int = 0,
                 prompt_len: int = 2):
    """Build a packed batch.

    rows: per sequence, a list of samples (grid_h, grid_w, n_text): an image of grid_h x grid_w
    patches followed by n_text text tokens, the first `prompt_len` of which carry no loss.
    """
    g = torch.Generator().manual_seed(seed)
    b = len(rows)
    tokens = torch.zeros(b, seq_length, dtype=torch.long)
    is_image = torch.zeros(b, seq_length, dtype=torch.bool)
    position_ids = torch.zeros(3, b, seq_length, dtype=torch.long)
    segment_ids = torch.full((b, seq_length), -1, dtype=torch.int32)
    labels = torch.full((b, seq_length), -100, dtype=torch.long)
    loss_mask = torch.zeros(b, seq_length)
    n_patches = 0
    for r, samples in enumerate(rows):
        s = 0
        for j, (gh, gw, n_text) in enumerate(samples):
            n_img = gh * gw
            assert s + n_img + n_text <= seq_length, "sample does not fit"
            rr, cc = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            is_image[r, s:s + n_img] = True
            position_ids[1, r, s:s + n_img] = rr.reshape(-1)
            position_ids[2, r, s:s + n_img] = cc.reshape(-1)
            t0 = s + n_img
            text = torch.randint(1, vocab, (n_text,), generator=g)
            tokens[r, t0:t0 + n_text] = text
            start = max(gh, gw)
            position_ids[:, r, t0:t0 + n_text] = torch.arange(start, start + n_text)
            segment_ids[r, s:t0 + n_text] = j
            # position p predicts token p+1; the last image patch predicts the first text token
            # (a prompt token: no loss), text position t predicts t+1 inside the sample.
            for p in range(t0 + prompt_len - 1, t0 + n_text - 1):
                labels[r, p] = tokens[r, p + 1]
                loss_mask[r, p] = 1.0
            n_patches += n_img
            s = t0 + n_text
    image_patches = torch.randn(n_patches, patch_dim, generator=g)
    return dict(tokens=tokens, image_patches=image_patches, is_image=is_image,
                position_ids=position_ids, segment_ids=segment_ids, labels=labels,
                loss_mask=loss_mask)
