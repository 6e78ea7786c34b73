"""Interleaved MRoPE against hand-written references (genlip.md: frequency index i reads H when i%3==1 and
i < 3*section_h, W when i%3==2 and i < 3*section_w, else T)."""

from __future__ import annotations

import math

import pytest
import torch

from genlip_megatron.hf.rope import apply_rotary, interleaved_mrope_freqs


@pytest.mark.parametrize("head_dim,section", [(24, [2, 3, 3]), (24, [6, 2, 3]), (64, [8, 12, 12]), (16, [4, 0, 4])])
def test_frequencies_match_hand_loop(head_dim, section):
    theta = 100.0
    g = torch.Generator().manual_seed(0)
    # distinct values on the three axes, so picking the wrong axis changes the angle
    position_ids = torch.stack([
        torch.randint(0, 50, (2, 5), generator=g),
        torch.randint(100, 150, (2, 5), generator=g),
        torch.randint(200, 250, (2, 5), generator=g),
    ])
    got = interleaved_mrope_freqs(position_ids, head_dim, theta, section)
    half = head_dim // 2
    expected = torch.zeros(2, 5, head_dim, dtype=torch.float64)
    for b in range(2):
        for s in range(5):
            for i in range(half):
                if i % 3 == 1 and i < 3 * section[1]:
                    axis = 1
                elif i % 3 == 2 and i < 3 * section[2]:
                    axis = 2
                else:
                    axis = 0
                angle = int(position_ids[axis, b, s]) * theta ** (-2.0 * i / head_dim)
                expected[b, s, i] = expected[b, s, i + half] = angle
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-4)


def test_image_only_positions_give_a_2d_rope():
    """Image patches (0, row, col): H slots rotate by row, W slots by column, T slots not at all."""
    head_dim, theta, section = 24, 10000.0, [2, 3, 3]
    rows = torch.arange(3).repeat_interleave(4)
    cols = torch.arange(4).repeat(3)
    position_ids = torch.stack([torch.zeros_like(rows), rows, cols])[:, None, :]  # [3, 1, 12]
    freqs = interleaved_mrope_freqs(position_ids, head_dim, theta, section)[0]  # [12, 24]
    h_slots, w_slots, t_slots = [1, 4, 7], [2, 5, 8], [0, 3, 6, 9, 10, 11]  # written out for section (2, 3, 3)
    inv = [theta ** (-2.0 * i / head_dim) for i in range(head_dim // 2)]
    for n in range(12):
        for i in h_slots:
            assert math.isclose(freqs[n, i].item(), rows[n].item() * inv[i], rel_tol=1e-6, abs_tol=1e-6)
        for i in w_slots:
            assert math.isclose(freqs[n, i].item(), cols[n].item() * inv[i], rel_tol=1e-6, abs_tol=1e-6)
        for i in t_slots:
            assert freqs[n, i].item() == 0.0


def test_image_attention_scores_depend_only_on_relative_2d_offset():
    head_dim, section = 24, [2, 3, 3]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)

    def score(pq, pk):
        fq = interleaved_mrope_freqs(torch.tensor(pq).view(3, 1, 1), head_dim, 10000.0, section).double()
        fk = interleaved_mrope_freqs(torch.tensor(pk).view(3, 1, 1), head_dim, 10000.0, section).double()
        return (apply_rotary(q, fq) * apply_rotary(k, fk)).sum().item()

    base = score([0, 1, 2], [0, 4, 0])
    assert math.isclose(base, score([0, 6, 9], [0, 9, 7]), rel_tol=1e-6)  # float32 angles
    assert not math.isclose(base, score([0, 1, 2], [0, 4, 1]), rel_tol=1e-3)  # w offset matters
    assert not math.isclose(base, score([0, 1, 2], [0, 5, 0]), rel_tol=1e-3)  # h offset matters


def test_text_positions_give_a_1d_rope():
    head_dim, theta = 24, 10000.0
    p = torch.arange(7)
    freqs = interleaved_mrope_freqs(torch.stack([p, p, p])[:, None], head_dim, theta, [2, 3, 3])[0]
    inv = torch.tensor([theta ** (-2.0 * i / head_dim) for i in range(head_dim // 2)])
    torch.testing.assert_close(freqs[:, : head_dim // 2], p[:, None].float() * inv)


def test_apply_rotary_is_a_complex_rotation_of_half_pairs():
    """rotate-half: channel j pairs with j + D/2, rotated by the angle of frequency j."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)
    f = torch.rand(2, 5, 4, generator=g, dtype=torch.float64) * 6
    got = apply_rotary(x, torch.cat([f, f], -1))
    z = torch.complex(x[..., :4], x[..., 4:]) * torch.polar(torch.ones_like(f), f)[:, None]
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], -1))
