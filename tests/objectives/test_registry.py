"""The registry: every preset belongs to exactly one objective, which lists it; Hugging Face folders go
to the objective whose export they are; validation asks the objective's own rules."""

import pytest

from genlip_megatron.config.load import load_config, preset_names
from genlip_megatron.config.validate import validate
from genlip_megatron.objectives import registry


def test_every_preset_is_listed_by_the_objective_it_names():
    listed = {name: preset for preset in registry.names() for name in registry.get(preset).presets}
    assert sorted(listed) == sorted(preset_names())
    for name, objective in listed.items():
        assert load_config(name).model.objective == objective, name


def test_hf_model_types_lead_to_their_objective():
    assert registry.spec_for_hf_model_type("genlip", importing=True)[0] == "genlip"
    assert registry.spec_for_hf_model_type("aimv2_vision_model")[0] == "aimv2"
    with pytest.raises(ValueError, match="no objective imports it"):
        registry.spec_for_hf_model_type("aimv2_vision_model", importing=True)


def test_objective_rules_come_from_the_spec():
    aimv2 = validate(load_config("aimv2_l14", ["parallel.pipeline_model_parallel_size=3",
                                               "model.attention=fused", "data.image_size=448"]), 24)
    assert any(line.startswith("parallel.pipeline_model_parallel_size=3") for line in aimv2)
    assert any(line.startswith("model.attention=fused: AIMv2 needs dense") for line in aimv2)
    assert any(line.startswith("model.aimv2_position_embedding=learned") for line in aimv2)
    # the same layout is fine for GenLIP, whose rule is the MRoPE section instead
    genlip = validate(load_config("genlip_l16", ["parallel.pipeline_model_parallel_size=3",
                                                 "model.attention=fused"]), 24)
    assert genlip == []
