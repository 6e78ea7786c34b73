"""`genlip submit --dry-run`: the rendered job for 128 nodes x 8 GPUs, checked line by line."""

from __future__ import annotations

import re

import pytest
from launch_dataset import empty_dataset

from genlip_megatron.cli import main


@pytest.fixture
def manifest(tmp_path):
    return empty_dataset(tmp_path / "data")


def _dry_run(capsys, *args) -> tuple[int, str]:
    code = main(["submit", *args, "--dry-run"])
    return code, capsys.readouterr().out


def test_128_nodes_x_8_gpus_one_torchrun_per_node_and_consistent_ranks(capsys, tmp_path, manifest):
    code, out = _dry_run(capsys, "genlip_g16", f"data.manifest={manifest}", f"checkpoint.dir={tmp_path}/run",
                         "launch.nodes=128", "launch.gpus_per_node=8", "parallel.tensor_model_parallel_size=2",
                         "launch.partition=gpu", "launch.account=proj", "launch.time=04:00:00",
                         "launch.signal_lead_s=600", "launch.env=[NCCL_SOCKET_IFNAME=ib0]")
    assert code == 0
    script, _, ranks = out.partition("# ---- per-rank commands")
    for line in ("#SBATCH --nodes=128", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --signal=B:USR1@600",
                 "#SBATCH --requeue", "#SBATCH --time=04:00:00", "export NCCL_SOCKET_IFNAME=ib0",
                 "export CUDA_DEVICE_MAX_CONNECTIONS=1"):
        assert line in script.splitlines(), line
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "scontrol requeue" in script
    torchruns = [line for line in ranks.splitlines() if line.startswith("node ")]
    assert len(torchruns) == 128  # one torchrun per node
    assert all(f"--node-rank={i} " in line and "--nnodes=128 --nproc-per-node=8" in line
               for i, line in enumerate(torchruns))
    rank_lines = [line for line in ranks.splitlines() if line.startswith("rank ")]
    assert len(rank_lines) == 1024
    pattern = re.compile(r"rank (\d+): node (\d+) local (\d+): RANK=(\d+) LOCAL_RANK=(\d+) WORLD_SIZE=(\d+) "
                         r"MASTER_ADDR=<node 0> .* >> (\S+)$")
    logs = set()
    for line in rank_lines:
        rank, node, local, env_rank, env_local, world, log = pattern.match(line).groups()
        assert int(rank) == int(env_rank) == int(node) * 8 + int(local)
        assert int(local) == int(env_local) < 8 and int(world) == 1024
        assert log.endswith(f"/$SLURM_JOB_ID/rank-{int(rank):05d}.log")
        logs.add(log)
    assert len(logs) == 1024  # every rank writes its own file
    assert "world size 1024 = 128 nodes x 8 ranks" in ranks


def test_srun_launcher_runs_one_task_per_gpu(capsys, tmp_path, manifest):
    code, out = _dry_run(capsys, "genlip_g16", f"data.manifest={manifest}", f"checkpoint.dir={tmp_path}/run",
                         "launch.nodes=2", "launch.launcher=srun")
    assert code == 0
    assert "#SBATCH --ntasks-per-node=8" in out
    assert 'bash "$JOB_DIR/rank.sh"' in out and "node 0: torchrun" not in out
    assert "rank 15: node 1 local 7: SLURM_PROCID=15 SLURM_LOCALID=7 SLURM_NTASKS=16" in out


def test_container_mounts_run_folders_and_dependency_is_rendered(capsys, tmp_path, manifest):
    code, out = _dry_run(capsys, "genlip_g16", f"data.manifest={manifest}", f"checkpoint.dir={tmp_path}/run",
                         "launch.container_image=nvcr.io/nvidia/pytorch:25.01-py3", "--dependency", "afterok:41")
    assert code == 0
    assert "--container-image=nvcr.io/nvidia/pytorch:25.01-py3" in out
    assert f"{tmp_path}/run:{tmp_path}/run" in out and f"{manifest.parent}:{manifest.parent}" in out
    assert "#SBATCH --dependency=afterok:41" in out


def test_shards_array_slices_the_build_and_merges_after(capsys, tmp_path):
    code, out = _dry_run(capsys, "tiny_cpu", "--shards", "16", "--max-parallel", "4", "--shards-args",
                         f"{tmp_path}/in --out {tmp_path}/shards --tokenizer tok.json")
    assert code == 0
    assert "#SBATCH --array=0-15%4" in out
    assert '--task-index "$SLURM_ARRAY_TASK_ID" --num-tasks 16' in out
    assert f"genlip_megatron.cli shards merge {tmp_path}/shards" in out
