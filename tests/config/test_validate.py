"""Specification of `validate`: each inconsistent config gives one line that names the dotted key."""

from __future__ import annotations

import pytest

from genlip_megatron.config.load import ConfigError, load_config
from genlip_megatron.config.validate import check, validate

GPU = "genlip_l16"  # a valid CUDA baseline
CPU = "tiny_cpu"  # a valid CPU baseline


def problems(base: str, *overrides: str, world_size: int | None = None) -> list[str]:
    return validate(load_config(base, list(overrides)), world_size)


def test_presets_have_no_problems_on_a_fitting_world_size():
    assert problems(GPU, world_size=512) == [] and problems(CPU, world_size=1) == []


def test_check_raises_every_problem_and_returns_a_valid_config():
    cfg = load_config(CPU, ["model.num_attention_heads=3", "schedule.warmup_fraction=1.0"])
    with pytest.raises(ConfigError) as info:
        check(cfg)
    assert len(str(info.value).splitlines()) >= 2
    valid = load_config(CPU)
    assert check(valid) is valid


# Model shape ----------------------------------------------------------------------------------

def test_heads_must_divide_by_tensor_parallel_size():
    assert "model.num_attention_heads=16 is not divisible by parallel.tensor_model_parallel_size=3" in \
        problems(GPU, "parallel.tensor_model_parallel_size=3", "model.ffn_hidden_size=2751")


def test_ffn_hidden_size_must_divide_by_tensor_parallel_size():
    assert "model.ffn_hidden_size=2750 is not divisible by parallel.tensor_model_parallel_size=4" in \
        problems(GPU, "parallel.tensor_model_parallel_size=4", "model.ffn_hidden_size=2750")


def test_padded_vocab_needs_a_positive_multiple():
    # With a positive multiple the padded vocab is a multiple of it x TP, so only <= 0 can break it.
    [line] = problems(CPU, "model.make_vocab_size_divisible_by=0")
    assert line.startswith("model.make_vocab_size_divisible_by=0 must be positive: the padded vocabulary")


def test_hidden_size_must_divide_by_heads():
    assert problems(CPU, "model.hidden_size=130") == [
        "model.hidden_size=130 is not divisible by model.num_attention_heads=4"]


def test_mrope_section_may_leave_frequencies_to_t_without_summing_to_half_the_head_dim():
    # The official L/16: head_dim 72 has 36 frequencies; H and W take 12 each, the T count (8) is unread.
    assert problems(GPU, "model.mrope_section=[8,12,12]", "model.hidden_size=1152") == []
    assert problems(CPU, "model.mrope_section=[0,5,5]") == []  # head_dim/2 = 16: 5 H and 5 W slots


def test_mrope_section_must_not_ask_for_more_h_or_w_frequencies_than_the_head_has():
    # The old L/16 mistake: width 1024 gives head_dim/2 = 32, with room for only 11 H and 10 W slots.
    assert problems(GPU, "model.hidden_size=1024") == [
        "model.mrope_section=[8, 12, 12] asks for 12 H frequencies, but the interleaved rule finds only 11 "
        "among head_dim/2 = 32 (every third frequency, below 3 x 12) (head_dim = 1024/16)"]
    [line] = problems(CPU, "model.mrope_section=[0,5,6]")
    assert line.startswith("model.mrope_section=[0, 5, 6] asks for 6 W frequencies, but the interleaved rule "
                           "finds only 5 among head_dim/2 = 16")


def test_mrope_section_must_have_three_axes():
    assert problems(CPU, "model.mrope_section=[8,8]") == [
        "model.mrope_section=[8, 8] must be three non-negative counts (T, H, W) (head_dim = 128/4)"]


def test_aimv2_decoder_width_must_divide_by_its_heads():
    assert "model.decoder_hidden_size=1000 is not divisible by model.decoder_num_attention_heads=16" in \
        problems(CPU, "model.objective=aimv2", "model.decoder_hidden_size=1000",
                 "model.decoder_num_attention_heads=16")


def test_aimv2_refuses_the_prefix_lm_fused_attention_in_one_line():
    assert "model.attention=fused: AIMv2 needs dense (the fused path is GenLIP's prefix-LM)" in \
        problems(CPU, "model.objective=aimv2", "model.attention=fused")
    assert not any("model.attention" in line
                   for line in problems(CPU, "model.objective=aimv2", "model.attention=dense"))


def test_drop_path_rate_must_be_a_probability_below_one():
    assert problems(CPU, "model.drop_path_rate=1.0") == ["model.drop_path_rate=1.0 must be in [0, 1)"]


# Parallel layout ------------------------------------------------------------------------------

def test_layers_must_divide_by_pipeline_stages_times_virtual_stages():
    lines = problems(GPU, "parallel.pipeline_model_parallel_size=4",
                     "parallel.virtual_pipeline_model_parallel_size=4")
    assert lines == [("model.num_layers=24 is not divisible by parallel.pipeline_model_parallel_size x "
                      "virtual_pipeline_model_parallel_size = 4 x 4 = 16")]


def test_layers_must_divide_by_pipeline_stages():
    assert "model.num_layers=24 is not divisible" in problems(GPU, "parallel.pipeline_model_parallel_size=5")[0]


def test_virtual_pipeline_needs_pipeline_parallelism():
    assert problems(GPU, "parallel.virtual_pipeline_model_parallel_size=2") == [
        ("parallel.virtual_pipeline_model_parallel_size=2 needs parallel.pipeline_model_parallel_size > 1 "
        "(set it to null)")]


def test_sequence_parallel_needs_tensor_parallelism():
    assert problems(GPU, "parallel.sequence_parallel=true") == [
        "parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1"]


def test_sequence_parallel_needs_seq_length_divisible_by_tensor_parallel_size():
    assert problems(GPU, "parallel.sequence_parallel=true", "parallel.tensor_model_parallel_size=2",
                    "data.seq_length=16385") == [
        ("data.seq_length=16385 is not divisible by "
        "parallel.tensor_model_parallel_size (sequence_parallel)=2")]


def test_context_parallel_runs_with_either_layer_spec_on_the_fused_attention():
    assert problems(GPU, "parallel.context_parallel_size=2") == []  # local spec, fused (the preset)
    assert problems(GPU, "parallel.context_parallel_size=4", "model.layer_spec=te") == []
    assert problems(GPU, "parallel.context_parallel_size=2", "parallel.tensor_model_parallel_size=2",
                    "parallel.sequence_parallel=true", world_size=4) == []


def test_context_parallel_paths_without_it_are_refused_in_one_line_each():
    assert problems(GPU, "parallel.context_parallel_size=2", "model.attention=dense", "data.seq_length=4096") == [
        ("parallel.context_parallel_size=2 needs model.attention=fused (the dense path's S x S mask has "
         "no context parallelism)")]
    assert problems("aimv2_l14", "parallel.context_parallel_size=2")[0] == (
        "parallel.context_parallel_size=2: objective 'aimv2' has no context parallelism (its spec does not "
        "split packed sequences over CP ranks)")


def test_context_parallel_needs_sequences_that_split_into_equal_chunks():
    assert problems(GPU, "parallel.context_parallel_size=2", "parallel.context_parallel_chunks=3") == [
        ("data.seq_length=16384 is not divisible by parallel.context_parallel_size x "
         "parallel.context_parallel_chunks = 2 x 3")]
    assert problems(GPU, "parallel.context_parallel_size=2", "parallel.context_parallel_chunks=1",
                    "parallel.tensor_model_parallel_size=4", "parallel.sequence_parallel=true",
                    "data.seq_length=16372") == [
        ("data.seq_length / parallel.context_parallel_size = 8186 is not divisible by "
         "parallel.tensor_model_parallel_size = 4 (sequence_parallel)")]
    assert problems(GPU, "parallel.context_parallel_chunks=0")[0].startswith("parallel.context_parallel_chunks=0")


def test_overlap_param_gather_needs_the_distributed_optimizer():
    assert problems(GPU, "parallel.overlap_param_gather=true", "parallel.use_distributed_optimizer=false") == [
        "parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true"]


def test_world_size_must_divide_by_the_model_parallel_layout():
    assert problems(GPU, "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
                    world_size=6) == [
        ("world_size=6 is not divisible by parallel.tensor_model_parallel_size x "
        "pipeline_model_parallel_size x context_parallel_size = 4")]


def test_global_batch_must_split_into_micro_batches_on_every_data_parallel_rank():
    assert problems(CPU, "train.micro_batch_size=2", world_size=3) == [
        ("train.global_batch_size=8 is not divisible by train.micro_batch_size x data-parallel size = 2 x 3 "
        "(world_size 3 / model-parallel 1)")]


def test_global_batch_must_divide_by_micro_batch_without_a_world_size():
    assert problems(CPU, "train.micro_batch_size=2", "train.global_batch_size=7") == [
        "train.global_batch_size=7 is not divisible by train.micro_batch_size=2"]


# Precision and device -------------------------------------------------------------------------

def test_fp8_needs_the_transformer_engine_layer_spec():
    assert problems(GPU, "train.precision=fp8", "model.layer_spec=local") == [
        "train.precision=fp8 needs model.layer_spec=te (got 'local')"]


@pytest.mark.parametrize("override, line", [
    ("model.layer_spec=te", "model.layer_spec=te needs a GPU, but train.device=cpu"),
    ("data.decoder_device=mixed", "data.decoder_device=mixed needs a GPU, but train.device=cpu"),
])
def test_cpu_device_rejects_gpu_only_settings(override, line):
    assert problems(CPU, override) == [line]


def test_cpu_device_rejects_fp8():
    assert "train.precision=fp8 needs a GPU, but train.device=cpu" in \
        problems(CPU, "train.precision=fp8", "model.layer_spec=te")


@pytest.mark.parametrize("key, choices", [
    ("model.objective", "genlip, aimv2"), ("model.layer_spec", "local, te"),
    ("model.attention", "dense, fused"), ("model.recompute", "none, selective, full"),
    ("train.precision", "fp32, bf16, fp8"), ("train.device", "cuda, cpu"),
    ("schedule.decay_style", "cosine, linear, constant"), ("data.decoder_device", "cpu, mixed"),
])
def test_unknown_enum_value_lists_the_choices(key, choices):
    assert f"{key}: unknown value 'bogus'; choose from {choices}" in problems(CPU, f"{key}=bogus")


# Data -----------------------------------------------------------------------------------------

def test_seq_length_must_hold_one_stage1_image_and_a_caption_token():
    # Longer captions are cut (end text first), so only the image must fit with room to spare.
    assert problems(CPU, "data.seq_length=300") == []
    assert problems(CPU, "data.seq_length=49") == [
        ("data.seq_length=49 is too short for one sample: 49 image tokens (data.image_size=28, "
         "model.patch_size=4) + at least one caption token, plus the prompt")]


def test_sample_cap_must_hold_the_largest_native_resolution_image():
    [line] = problems("genlip_g16_stage2", "data.max_sample_tokens=1024")
    assert line.startswith("data.max_sample_tokens=1024 is too short for one sample: 1024 image tokens "
                           "(data.max_pixels=262144")
    [line] = problems("genlip_g16_stage2", "data.seq_length=1000", "data.max_sample_tokens=null")
    assert line.startswith("data.seq_length=1000 is too short for one sample: 1024 image tokens")


def test_sample_cap_must_fit_one_packed_sequence():
    assert problems(CPU, "data.max_sample_tokens=600") == [
        "data.max_sample_tokens=600 is longer than data.seq_length=512: a sample must fit one packed sequence"]


@pytest.mark.parametrize("key", ["data.max_sample_tokens", "data.max_caption_tokens"])
def test_caps_are_positive_or_null(key):
    assert problems(CPU, f"{key}=null") == []
    assert problems(CPU, f"{key}=0") == [f"{key}=0 must be positive"]


def test_recipe_switches_list_their_choices():
    assert problems(CPU, "model.drop_path_schedule=cosine") == [
        "model.drop_path_schedule: unknown value 'cosine'; choose from constant, linear"]
    assert problems(CPU, "optimizer.decay_params=none") == [
        "optimizer.decay_params: unknown value 'none'; choose from all, megatron"]


def test_image_size_must_be_a_multiple_of_the_patch():
    assert problems(CPU, "data.image_size=30") == ["data.image_size=30 is not divisible by model.patch_size=4"]


def test_min_pixels_must_not_exceed_max_pixels():
    assert problems(CPU, "data.min_pixels=300000") == [
        "data.min_pixels=300000 is larger than data.max_pixels=262144"]


def test_crop_scale_must_be_an_ordered_fraction_pair():
    assert problems(CPU, "data.crop_scale=[1.0,0.5]") == [
        "data.crop_scale=[1.0, 0.5] must be [low, high] with 0 < low <= high <= 1"]


# Optimizer and schedule -----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_warmup_fraction_must_be_in_zero_one(value):
    assert problems(CPU, f"schedule.warmup_fraction={value}") == [
        f"schedule.warmup_fraction={float(value)} must be in [0, 1)"]


def test_lr_must_not_be_below_min_lr():
    assert problems(CPU, "optimizer.lr=1e-7", "optimizer.min_lr=1e-6") == [
        "optimizer.lr=1e-07 is smaller than optimizer.min_lr=1e-06"]


def test_adam_betas_must_be_below_one():
    assert problems(CPU, "optimizer.adam_beta2=1.0") == ["optimizer.adam_beta2=1.0 must be in [0, 1)"]


# Signs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["model.num_layers", "train.micro_batch_size", "data.seq_length",
                                 "parallel.tensor_model_parallel_size", "checkpoint.save_interval"])
def test_sizes_must_be_positive_and_give_one_line(key):
    assert problems(CPU, f"{key}=0") == [f"{key}=0 must be positive"]


@pytest.mark.parametrize("key", ["data.num_workers", "train.eval_iters", "optimizer.weight_decay"])
def test_counts_and_rates_must_not_be_negative(key):
    assert f"{key}=-1{'.0' if key.startswith('optimizer') else ''} must be >= 0" in problems(CPU, f"{key}=-1")


def test_world_size_must_be_positive():
    assert "world_size=0 must be positive" in problems(CPU, world_size=0)
