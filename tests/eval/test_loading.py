"""Models for evaluation: the config tree maps onto the HF config, and a full megatron-core state dict
comes back as the same HF model."""

import torch
from eval_fixtures import tiny_model, toy_images

from genlip_megatron.config.load import load_config
from genlip_megatron.config.schema import ModelConfig
from genlip_megatron.convert.hf_config import genlip_hf_config as hf_config_from_model_config
from genlip_megatron.convert.mcore_names import hf_to_mcore
from genlip_megatron.eval.loading import load_model
from genlip_megatron.objectives.genlip.evaluation import model_from_mcore_state_dict, random_model


def test_tiny_cpu_preset_maps_to_the_hf_config():
    model = load_config("tiny_cpu").model
    config = hf_config_from_model_config(model)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 4, 4)
    assert (config.intermediate_size, config.patch_size, config.vocab_size) == (344, 4, 512)
    assert config.mrope_section == [6, 5, 5] and config.text_embed_dim == 128
    assert config.ls_init_value == model.layer_scale_init


def test_random_models_of_one_seed_are_equal_and_of_two_seeds_differ():
    model = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, ffn_hidden_size=48, patch_size=4,
                        vocab_size=20, mrope_section=[2, 3, 3])
    a, b, c = random_model(model, seed=1), random_model(model, seed=1), random_model(model, seed=2)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_mcore_state_dict_round_trip_gives_the_same_outputs(tmp_path):
    hf = tiny_model(seed=5)
    c = hf.config
    model = ModelConfig(hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                        num_attention_heads=c.num_attention_heads, ffn_hidden_size=c.intermediate_size,
                        patch_size=c.patch_size, vocab_size=c.vocab_size, mrope_section=c.mrope_section,
                        drop_path_rate=0.0)
    mc = hf_to_mcore(hf.state_dict(), num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
                     padded_vocab=128)
    back = model_from_mcore_state_dict(mc, model)
    images, ids = toy_images(2), torch.tensor([[1, 2, 3], [4, 5, 6]])
    want = hf(pixel_values=images, input_ids=ids).logits
    torch.testing.assert_close(back(pixel_values=images, input_ids=ids).logits, want)
    hf.save_pretrained(tmp_path)  # and an HF folder loads through the same entry point
    torch.testing.assert_close(load_model(str(tmp_path))(pixel_values=images, input_ids=ids).logits, want)
