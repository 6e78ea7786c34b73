"""`genlip launch local`: torchrun on this machine, checked for the world size first."""

from __future__ import annotations

from genlip_megatron.cli import main


def test_dry_run_prints_one_standalone_torchrun_with_n_ranks(capsys):
    # tiny_cpu steps in one micro-batch of 8 on one rank: two ranks take 4 each
    args = ["tiny_cpu", "train.synthetic_data=true", "train.micro_batch_size=4"]
    assert main(["launch", "local", "--nproc", "2", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "-m torch.distributed.run --standalone --nproc-per-node=2" in out
    assert out.rstrip().endswith("-m genlip_megatron.cli train " + " ".join(args))


def test_a_world_size_the_batch_cannot_split_over_fails_before_starting(capsys):
    # tiny_cpu: global batch 8 -> 3 ranks cannot share it evenly
    assert main(["launch", "local", "--nproc", "3", "tiny_cpu"]) == 2
    assert "train.global_batch_size=8 is not divisible" in capsys.readouterr().err
