"""HF GenLIP -> megatron-core checkpoint for TP2 x PP2: the round trip back to HF is bit-identical
(directly, and after a real TP2 x PP2 load + save), and the trainer continues from it with a first
loss equal to the HF model's loss on the same batch."""

from __future__ import annotations

import pytest
import torch
from convert_runs import continue_training, load_and_resave, reference_hf_model
from multiproc import run_on_ranks
from safetensors.torch import load_file

from genlip_megatron.convert.from_hf import import_from_hf
from genlip_megatron.convert.to_hf import export_to_hf


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    hf = tmp_path_factory.mktemp("hf") / "reference"
    reference_hf_model().save_pretrained(hf)
    out = tmp_path_factory.mktemp("imported") / "tp2pp2"
    base = hf.parent / "base.yaml"  # the trainer's padding unit (convert_runs.TINY), not the default 128
    base.write_text("model:\n  make_vocab_size_divisible_by: 8\n")
    summary = import_from_hf(str(hf), str(out), tp=2, pp=2, base_config=str(base))
    assert summary["padded_vocab"] == 80  # 70 rounded up to 8 x TP2
    return {"hf": hf, "checkpoint": out}


def _assert_bit_identical(folder_a, folder_b):
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, different


def test_hf_to_megatron_to_hf_is_bit_identical(imported, tmp_path):
    export_to_hf(str(imported["checkpoint"]), str(tmp_path / "back"), without_tokenizer=True)
    _assert_bit_identical(imported["hf"], tmp_path / "back")


def test_round_trip_through_a_tp2_pp2_load_and_save_is_bit_identical(imported, tmp_path):
    run_dir = tmp_path / "resaved"
    run_on_ranks(4, load_and_resave, str(imported["checkpoint"]), str(run_dir), 2, 2, tp=2, pp=2, timeout=300)
    export_to_hf(str(run_dir), str(tmp_path / "back"), without_tokenizer=True)  # a run directory: follows `latest`
    _assert_bit_identical(imported["hf"], tmp_path / "back")


def test_continued_pretraining_starts_at_the_hf_models_loss(imported, tmp_path):
    result = run_on_ranks(4, continue_training, str(imported["checkpoint"]), str(tmp_path / "run"), 2, 2,
                          tp=2, pp=2, timeout=300)[0]
    assert sorted(result["losses"]) == [1]
    model = reference_hf_model()
    with torch.no_grad():
        sums, counts = zip(*(model.loss_packed(b) for b in result["batches"]))
    expected = (sum(sums) / sum(counts)).item()
    assert abs(result["losses"][1] - expected) < 1e-5, (result["losses"][1], expected)
