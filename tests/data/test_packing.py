"""Per-sample sequences and packing (sample_sequence.py, packing.py): whole samples, exact per-sample content."""

import numpy as np
import pytest
import torch

from genlip_megatron.data.packing import pack_sequences, plan_step
from genlip_megatron.data.sample_sequence import IGNORE_INDEX, TextLayout, build_sample_sequence, patchify
from genlip_megatron.data.sampler import GlobalOrder
from genlip_megatron.model.varlen_attention import prefix_lm_spans

TEXT = TextLayout(prompt_ids=(7, 8), end_ids=(9,), max_caption_tokens=4)


def test_sample_sequence_layout_masks_labels_and_positions():
    seq = build_sample_sequence(2, 3, np.array([21, 22, 23]), TEXT)
    # [6 image][prompt 7 8][caption 21 22 23][end 9]
    assert seq.tokens.tolist() == [0] * 6 + [7, 8, 21, 22, 23, 9]
    assert seq.is_image.tolist() == [True] * 6 + [False] * 6
    assert seq.position_ids[:, :6].T.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert (seq.position_ids[:, 6:] == np.arange(3, 9)).all()  # text starts at max(2, 3) on all axes
    assert seq.labels.tolist() == [IGNORE_INDEX] * 5 + [7, 8, 21, 22, 23, 9, IGNORE_INDEX]
    # loss exactly where the label is a caption or end token
    assert seq.loss_mask.tolist() == [0] * 7 + [1] * 4 + [0]
    assert seq.end_tokens == 1


def test_a_caption_cut_by_the_caption_cap_gets_no_end_token():
    seq = build_sample_sequence(2, 3, np.array([21, 22, 23, 24, 25]), TEXT)  # 5 > max_caption_tokens 4
    assert seq.tokens.tolist() == [0] * 6 + [7, 8, 21, 22, 23, 24]  # it never ended: no 9
    assert seq.labels.tolist() == [IGNORE_INDEX] * 5 + [7, 8, 21, 22, 23, 24, IGNORE_INDEX]
    assert seq.loss_mask.tolist() == [0] * 7 + [1] * 4 + [0] and seq.end_tokens == 0
    assert TEXT.sample_length(6, 5) == len(seq) and TEXT.sample_length(6, 3) == 12


def test_the_sample_cap_cuts_the_tail_end_text_first_as_the_official_code_does():
    two_end = TextLayout(prompt_ids=(7, 8), end_ids=(9, 10), max_sample_tokens=13)  # "<|im_end|>", "\n"
    whole = build_sample_sequence(2, 3, np.array([21, 22, 23]), two_end)  # 6 + 2 + 3 + 2 = 13: fits
    assert whole.tokens.tolist()[6:] == [7, 8, 21, 22, 23, 9, 10] and whole.end_tokens == 2
    one_more = build_sample_sequence(2, 3, np.array([21, 22, 23, 24]), two_end)  # 14: the newline goes
    assert one_more.tokens.tolist()[6:] == [7, 8, 21, 22, 23, 24, 9] and one_more.end_tokens == 1
    long = build_sample_sequence(2, 3, np.arange(30, 50), two_end)  # the caption itself is cut
    assert long.tokens.tolist()[6:] == [7, 8, 30, 31, 32, 33, 34] and long.end_tokens == 0
    assert long.loss_mask.sum() == 5 and long.labels[-2] == 34
    for caption in (3, 4, 20):
        assert two_end.sample_length(6, caption) == len(build_sample_sequence(2, 3, np.arange(caption), two_end))
    with pytest.raises(ValueError, match="leave no caption token within the 13-token sample cap"):
        build_sample_sequence(3, 4, np.arange(5), two_end)  # 12 image tokens + 2 prompt > 13 - 1


def test_seq_length_is_the_sample_cap_when_none_is_set():
    assert TextLayout((7,), (9,)).capped(40).max_sample_tokens == 40
    assert TextLayout((7,), (9,), max_sample_tokens=30).capped(40).max_sample_tokens == 30


def test_patchify_order_matches_conv2d_weight_columns():
    image = torch.randn(3, 8, 12)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4, bias=False)
    expected = conv(image[None])[0].flatten(1).T  # [grid_h * grid_w, 5], row-major grid
    rows = torch.from_numpy(patchify(image.numpy(), 4))
    assert torch.allclose(rows @ conv.weight.reshape(5, -1).T, expected, atol=1e-5)


def _lengths(seed=0, n=500):
    rng = np.random.default_rng(seed)
    return rng.integers(10, 90, size=n)


def test_plan_packs_whole_samples_first_fit_over_a_contiguous_range():
    order, lengths = GlobalOrder([200, 300], seed=5), _lengths()
    plan = plan_step(order, 37, num_sequences=4, seq_length=256, length_of=lambda p, i: int(lengths[i]))
    slots = [s for b in plan.bins for s in b]
    assert sorted(s.position for s in slots) == list(range(37, plan.end))  # contiguous, nothing skipped
    assert all(sum(s.length for s in b) <= 256 for b in plan.bins)
    assert all(s.index == order.indices([s.position])[0] for s in slots)
    free = [256 - sum(s.length for s in b) for b in plan.bins]
    assert max(free) < lengths[order.indices([plan.end])[0]]  # the step ends at the first misfit
    # first-fit: each sample went to the lowest-numbered sequence with room at its time
    fill = [0] * 4
    for s in sorted(slots, key=lambda s: s.position):
        target = next(j for j in range(4) if fill[j] + s.length <= 256)
        assert s in plan.bins[target]
        fill[target] += s.length


def test_plan_is_a_pure_function_of_consumed_samples_and_skips_unreadable_metadata():
    order, lengths = GlobalOrder([500], seed=1), _lengths()

    def length_of(position, index):
        if index % 50 == 0:
            raise OSError("unreadable")
        return int(lengths[index])

    first = plan_step(order, 0, 3, 256, length_of)
    again = plan_step(order, 0, 3, 256, length_of)
    second = plan_step(order, first.end, 3, 256, length_of)
    assert first.bins == again.bins and first.end == again.end
    placed = {s.position for b in first.bins + second.bins for s in b}
    skipped = {p for p, _, _ in first.unreadable + second.unreadable}
    assert placed.isdisjoint(skipped) and placed | skipped == set(range(second.end))
    assert all(order.indices([p])[0] % 50 == 0 for p in skipped)


def test_plan_refuses_a_sample_longer_than_the_sequence():
    with pytest.raises(ValueError, match="seq_length"):
        plan_step(GlobalOrder([3], seed=0), 0, 2, 16, lambda p, i: 17)


def _samples(rng, grids, patch=2):
    out = []
    for gh, gw, cap in grids:
        seq = build_sample_sequence(gh, gw, rng.integers(20, 60, size=cap), TEXT)
        out.append((seq, rng.standard_normal((gh * gw, 3 * patch * patch)).astype(np.float32)))
    return out


def test_packed_tensors_equal_the_per_sample_tensors():
    rng = np.random.default_rng(0)
    rows = [_samples(rng, [(2, 3, 4), (1, 2, 1), (3, 1, 2)]), _samples(rng, [(2, 2, 3)])]
    batch = pack_sequences(rows, seq_length=40)
    assert batch.tokens.shape == (2, 40) and batch.position_ids.shape == (3, 2, 40)
    assert batch.image_patches.shape == (6 + 2 + 3 + 4, 12)
    assert int(batch.is_image.sum()) == batch.image_patches.shape[0]
    patch_rows = iter(batch.image_patches)
    for b, row in enumerate(rows):
        offset = 0
        for seg, (seq, patches) in enumerate(row):
            sl = slice(offset, offset + len(seq))
            assert batch.tokens[b, sl].tolist() == seq.tokens.tolist()
            assert batch.is_image[b, sl].tolist() == seq.is_image.tolist()
            assert batch.position_ids[:, b, sl].tolist() == seq.position_ids.tolist()
            assert batch.labels[b, sl].tolist() == seq.labels.tolist()
            assert batch.loss_mask[b, sl].tolist() == seq.loss_mask.tolist()
            assert (batch.segment_ids[b, sl] == seg).all()
            for p in patches:  # b-major, then sequence order
                assert torch.equal(next(patch_rows), torch.from_numpy(p))
            offset += len(seq)
        pad = slice(offset, 40)  # padding: no token, no loss, no label, segment -1, position 0
        assert (batch.segment_ids[b, pad] == -1).all() and (batch.labels[b, pad] == IGNORE_INDEX).all()
        assert (batch.loss_mask[b, pad] == 0).all() and (batch.position_ids[:, b, pad] == 0).all()
    lens = [len(s) for row in rows for s, _ in row]
    # spans: (start, text start, end) per sample in the flattened [B * S] stream, padding in none
    starts = [0, lens[0], lens[0] + lens[1], 40]
    assert batch.spans.tolist() == [[s, s + n, s + n_all] for s, n, n_all in zip(starts, [6, 2, 3, 4], lens)]
    assert batch.spans.tolist() == prefix_lm_spans(batch.segment_ids, batch.is_image).tolist()


def test_pack_through_the_reference_model_equals_samples_run_one_by_one():
    from genlip_megatron.hf.configuration_genlip import GenLIPConfig
    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    torch.manual_seed(0)
    config = GenLIPConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                          patch_size=2, mrope_section=[2, 3, 3], vocab_size=64, drop_path_rate=0.0)
    model = GenLIPModel(config).eval()
    rng = np.random.default_rng(1)
    row = _samples(rng, [(2, 3, 4), (1, 2, 1), (3, 1, 2)])
    packed = pack_sequences([row], seq_length=48)
    keys = ("tokens", "image_patches", "is_image", "position_ids", "segment_ids")
    with torch.no_grad():
        logits = model.forward_packed(*(getattr(packed, k) for k in keys))["logits"][0]
        offset = 0
        for sample in row:
            alone = pack_sequences([[sample]], seq_length=len(sample[0]))
            expected = model.forward_packed(*(getattr(alone, k) for k in keys))["logits"][0]
            assert torch.allclose(logits[offset : offset + len(sample[0])], expected, atol=1e-5)
            offset += len(sample[0])
