"""The `genlip` command line behaves as users expect of one: options and `key=value` overrides in any
order, a single-process run that never fights another over a port, output folders made as needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from fmnist_run import genlip

from genlip_megatron.cli import main
from genlip_megatron.config.load import load_config
from genlip_megatron.config.validate import validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = ["train.synthetic_data=true", "train.device=cpu", "launch.gpus_per_node=1"]
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_attention_heads=4", "model.ffn_hidden_size=64",
        "model.mrope_section=[2,1,1]", "model.vocab_size=64", "model.patch_size=4", "data.image_size=8",
        "data.seq_length=32", "data.max_caption_tokens=8", "train.micro_batch_size=1",
        "train.global_batch_size=4", "train.synthetic_data=true", "logging.progress_bar=false"]

# Every subcommand that takes a CONFIG, with one of its options: (argv before CONFIG, option, check).
CONFIG_COMMANDS = {
    "config": ([], ["--world-size", "1"]),
    "train": ([], ["--dry-run"]),
    "submit": ([], ["--dry-run"]),
    "launch": (["local"], ["--nproc", "1", "--dry-run"]),
    "plan": ([], ["--gpus", "8"]),
}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_options_and_overrides_parse_in_any_order(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    before, option = CONFIG_COMMANDS[command]
    overrides = ["model.num_layers=2", f"checkpoint.dir={tmp_path / 'run'}", *SYNTHETIC]
    outputs = []
    for argv in ([command, *before, "tiny_cpu", *option, *overrides],  # CONFIG --opt k=v
                 [command, *before, "tiny_cpu", *overrides, *option],  # CONFIG k=v --opt
                 [command, *before, "tiny_cpu", overrides[0], *option, *overrides[1:]]):  # mixed
        code, out, err = _run(argv, capsys)
        assert code == 0, (argv, err)
        outputs.append(out)
    # The same command either way; submit names its frozen config by the time of day, so compare
    # what it would train.
    if command == "submit":
        outputs = [[line for line in o.splitlines() if "genlip-2" not in line] for o in outputs]
    assert outputs[0] == outputs[1] == outputs[2]
    if command in ("config", "train"):
        assert yaml.safe_load(outputs[0])["model"]["num_layers"] == 2


def test_plan_prints_an_override_line_that_selects_its_best_layout(capsys):
    code, out, _ = _run(["plan", "genlip_l16", "--gpus", "64", "--gpu", "h100"], capsys)
    assert code == 0
    line = next(x for x in out.splitlines() if "overrides for genlip train / submit:" in x).split(": ", 1)[1]
    best = next(x for x in out.splitlines() if x.startswith("best layout ")).split(" (")[0][len("best layout "):]
    cfg = load_config("genlip_l16", line.split())  # pasted as it is after CONFIG
    assert validate(cfg, world_size=64) == []
    assert cfg.launch.nodes * cfg.launch.gpus_per_node == 64
    p = cfg.parallel
    vpp = f" VPP{p.virtual_pipeline_model_parallel_size}" if p.virtual_pipeline_model_parallel_size else ""
    sp = "+SP" if p.sequence_parallel else ""
    dp = 64 // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size)
    assert best == (f"TP{p.tensor_model_parallel_size}{sp} PP{p.pipeline_model_parallel_size}{vpp} "
                    f"CP{p.context_parallel_size} DP{dp} mbs{cfg.train.micro_batch_size} recompute={cfg.model.recompute}")


def test_two_single_process_trainings_on_one_host_run_at_once(tmp_path):
    """Both start with the same MASTER_PORT in their environment (as a shell profile or a previous
    torchrun would leave it): a world of one binds a free port instead, so neither fails to start."""
    env = dict(os.environ, MASTER_PORT="29500", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    procs, logs = [], []
    for name in ("a", "b"):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        args = ["train", "tiny_cpu", *TINY, "schedule.train_iters=40", f"checkpoint.dir={tmp_path / name}",
                "checkpoint.save_interval=1000"]
        procs.append(subprocess.Popen([sys.executable, "-m", "genlip_megatron.cli", *args], cwd=REPO, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    # Both must be training at the same moment: each writes metrics.jsonl from its first step on.
    deadline, overlapped = time.monotonic() + 240, False
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if all((tmp_path / n / "metrics.jsonl").exists() for n in ("a", "b")):
            overlapped = True
            break
        time.sleep(0.05)
    codes = [p.wait(timeout=240) for p in procs]
    for log in logs:
        log.close()
    text = "\n".join((tmp_path / f"{n}.log").read_text()[-2000:] for n in ("a", "b"))
    assert codes == [0, 0], text
    assert overlapped, "the two runs never trained at the same time; the test proves nothing"


def test_commands_create_the_parent_folders_of_what_they_write(tmp_path):
    texts = tmp_path / "captions.txt"
    texts.write_text("\n".join(f"a photo of item {i}" for i in range(50)))
    out = tmp_path / "new" / "deeper" / "tokenizer.json"
    done = genlip(["tokenizer", "train", str(texts), "--out", str(out), "--vocab-size", "300"], cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert out.is_file()
