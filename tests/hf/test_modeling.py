"""GenLIPModel: packing invariance, gated attention by hand, the HF entry point, loss and weight names."""

from __future__ import annotations

import math

import pytest
import torch
from genlip_tiny import pack, packed_inputs, three_samples, tiny_model

from genlip_megatron.hf.rope import interleaved_mrope_freqs


def test_packed_forward_equals_each_sample_alone():
    model = tiny_model()
    samples = three_samples()
    batch = pack(samples, 32)
    with torch.no_grad():
        packed = model.forward_packed(**packed_inputs(batch))
        seg = batch["segment_ids"][0]
        for i, sample in enumerate(samples):
            n = int((seg == i).sum())
            alone = model.forward_packed(**packed_inputs(pack([sample], n)))
            for key in ("logits", "hidden_states", "trunk"):
                torch.testing.assert_close(packed[key][0, seg == i], alone[key][0], rtol=1e-5, atol=1e-5)


def test_gated_attention_equals_per_head_loop():
    model = tiny_model()
    attn = model.visual.layers[0].self_attn
    width, heads, hd = 64, 4, 16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, width, generator=g)
    pos = torch.randint(0, 9, (3, 1, 6), generator=g)
    allowed = torch.rand(1, 1, 6, 6, generator=g) > 0.4
    allowed |= torch.eye(6, dtype=torch.bool)
    freqs = interleaved_mrope_freqs(pos, hd, 10000.0, [2, 3, 3])[0]  # [6, 16]
    with torch.no_grad():
        got = attn(x, freqs[None], allowed)[0]
        wq, bq = attn.q_proj.weight, attn.q_proj.bias
        out = torch.zeros(6, width)
        for h in range(heads):
            rows = slice(h * hd, (h + 1) * hd)
            gate_rows = slice(width + h * hd, width + (h + 1) * hd)
            q = x[0] @ wq[rows].T + bq[rows]
            gate = x[0] @ wq[gate_rows].T + bq[gate_rows]
            k = x[0] @ attn.k_proj.weight[rows].T + attn.k_proj.bias[rows]
            v = x[0] @ attn.v_proj.weight[rows].T + attn.v_proj.bias[rows]
            for s in range(6):  # rotate-half, by hand
                c, sn = torch.cos(freqs[s, :8]), torch.sin(freqs[s, :8])
                for t in (q, k):
                    a, b = t[s, :8].clone(), t[s, 8:].clone()
                    t[s, :8], t[s, 8:] = a * c - b * sn, b * c + a * sn
            scores = (q @ k.T) / math.sqrt(hd)
            scores = scores.masked_fill(~allowed[0, 0], float("-inf"))
            out[:, rows] = (scores.softmax(-1) @ v) * torch.sigmoid(gate)
        expected = out @ attn.out_proj.weight.T + attn.out_proj.bias
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_patch_linear_equals_conv_and_hf_forward_equals_packed_path():
    model = tiny_model()
    samples = three_samples()[:1]
    pixels, text = samples[0]["pixels"], samples[0]["text"]
    with torch.no_grad():
        conv = model.vision_embeddings.patch_embedding(pixels[None])  # [1, W, 2, 3]
        batch = pack(samples, 11)
        linear = model.vision_embeddings(batch["image_patches"])
        torch.testing.assert_close(linear, conv.flatten(2)[0].T, rtol=1e-5, atol=1e-5)
        hf = model(pixel_values=pixels[None], input_ids=text[None], labels=text[None])
        packed = model.forward_packed(**packed_inputs(batch))
    torch.testing.assert_close(hf.logits, packed["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf.image_features, packed["hidden_states"][:, :6], rtol=1e-5, atol=1e-5)
    # HF loss: mean CE of text position t predicting token t+1
    logits = packed["logits"][0, 6:-1]
    expected = torch.stack([-logits[t].log_softmax(-1)[text[t + 1]] for t in range(4)]).mean()
    torch.testing.assert_close(hf.loss, expected, rtol=1e-5, atol=1e-5)


def test_loss_packed_is_sum_over_loss_mask_and_count():
    model = tiny_model()
    batch = pack(three_samples(), 32)
    batch["loss_mask"][0, 7] = 0.0  # a position with a label but no loss
    with torch.no_grad():
        loss_sum, count = model.loss_packed(batch)
        logits = model.forward_packed(**packed_inputs(batch))["logits"][0]
    expected = sum(
        -logits[s].log_softmax(-1)[batch["labels"][0, s]]
        for s in range(32) if batch["loss_mask"][0, s] == 1.0
    )
    assert count.item() == (4 + 2 + 6) - 1  # captions of 5, 3, 7 tokens, one masked out
    torch.testing.assert_close(loss_sum, expected, rtol=1e-5, atol=1e-4)


def test_state_dict_has_exactly_the_official_names():
    def layer(n):
        attn = [f"self_attn.{p}_proj.{t}" for p in ("q", "k", "v", "out") for t in ("weight", "bias")]
        mlp = [f"mlp.{p}.{t}" for p in ("fc1", "gate_fc", "fc2") for t in ("weight", "bias")]
        norms = [f"layer_norm{i}.{t}" for i in (1, 2) for t in ("weight", "bias")]
        scales = ["layer_scale1.lambda1", "layer_scale2.lambda1"]
        return {f"visual.layers.{n}.{k}" for k in attn + mlp + norms + scales}

    common = {"vision_embeddings.patch_embedding.weight", "vision_embeddings.patch_embedding.bias",
              "ln_post.weight", "ln_post.bias", "embeddings.weight", "lm_head.weight"} | layer(0) | layer(1)
    projections = {f"{m}.{t}" for m in ("in_proj", "proj") for t in ("weight", "bias")}
    assert set(tiny_model().state_dict()) == common | projections  # text_embed_dim 48 != width 64
    assert set(tiny_model(text_embed_dim=64).state_dict()) == common
    model = tiny_model()
    assert model.visual.layers[0].self_attn.q_proj.weight.shape == (128, 64)  # [q ; gate]
    assert model.lm_head.bias is None and model.embeddings.weight.shape == (97, 48)


def test_init_weights_and_drop_path_only_in_training():
    from genlip_tiny import tiny_config

    from genlip_megatron.hf.modeling_genlip import GenLIPModel

    torch.manual_seed(0)
    model = GenLIPModel(tiny_config(drop_path_rate=0.9, num_hidden_layers=3))
    assert torch.all(model.visual.layers[1].layer_scale2.lambda1 == 0.1)
    assert torch.all(model.ln_post.weight == 1) and torch.all(model.ln_post.bias == 0)
    assert abs(model.visual.layers[0].mlp.fc1.weight.std().item() - 0.02) < 2e-3
    attn = model.visual.layers[0].self_attn  # official: xavier-uniform, q_proj [2W, W] with the gate rows
    assert attn.q_proj.weight.std().item() == pytest.approx((2 / (3 * 64)) ** 0.5, rel=0.05)
    assert attn.out_proj.weight.std().item() == pytest.approx((1 / 64) ** 0.5, rel=0.05)
    assert not attn.k_proj.bias.any()
    assert [layer.drop_path.rate for layer in model.visual.layers] == [0.9, 0.9, 0.9]  # official: constant
    linear = GenLIPModel(tiny_config(drop_path_rate=0.9, num_hidden_layers=3, drop_path_schedule="linear"))
    assert [round(layer.drop_path.rate, 6) for layer in linear.visual.layers] == [0.0, 0.45, 0.9]
    inputs = packed_inputs(pack(three_samples(), 32))
    model.eval()
    with torch.no_grad():
        a, b = (model.forward_packed(**inputs)["trunk"] for _ in range(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        outs = [model.forward_packed(**inputs)["trunk"] for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
