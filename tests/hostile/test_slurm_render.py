"""Rendered SLURM scripts carry hostile values as text and run nothing but what they should.

Every launch field and path that reaches a script holds spaces, quotes, `$(...)`, backticks, `#`,
`;`, `&` and `|` (the working folder itself is named that way); every rendered script must pass
`bash -n`, its #SBATCH lines must read back (as sbatch reads them) to exactly the intended
arguments, and run under stub srun/scontrol/sbatch/torchrun/python (slurm_stubs.py) it must make
exactly the expected calls, create files only in its job folder, and never create the marker that
each `$(touch PAYLOAD_RAN)` would. Values that cannot be carried (a line break in an #SBATCH value,
a job name with a slash, a malformed --dependency) are refused in one line before anything is written.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from harness import run_command
from slurm_stubs import Stubs, directives

from genlip_megatron.config.load import load_config
from genlip_megatron.config.yaml_io import dump_yaml
from launch import render
from launch.quoting import QuotingError, sbatch_directive, sbatch_value

pytestmark = pytest.mark.timeout(120)
MARK = "PAYLOAD_RAN"
HOSTILE = f"w $(touch {MARK}) `touch {MARK}` \"q\" 'r' #s; x & y | z"  # also a folder name


def _markers(root) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(str(root)) for f in files if f.startswith(MARK)]


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), str(root)) for d, _, files in os.walk(str(root)) for f in files}


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A working folder named HOSTILE holding a venv (and, once _config runs, a hostile config)."""
    work = tmp_path / HOSTILE
    work.mkdir()
    venv = work / f"venv {HOSTILE}"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'echo "venv activated" >> "{tmp_path}/activated.log"\n')
    monkeypatch.chdir(work)
    return work


def _config(work, launcher: str = "torchrun", **launch) -> str:
    data = {"base": "tiny_cpu",
            "train": {"device": "cpu", "synthetic_data": True, "micro_batch_size": 4},  # 8 over 2 ranks
            "checkpoint": {"dir": f"run {HOSTILE}"},
            "launch": {"launcher": launcher, "gpus_per_node": 2, "time": "10",
                       "signal_lead_s": 60, "venv": str(work / f"venv {HOSTILE}"),
                       "env": [f"HOSTILE_A=$(touch {MARK}) `touch {MARK}`", "HOSTILE_B='\"; touch x; \"'"],
                       "sbatch_args": [f"--comment={HOSTILE}"], "setup": 'echo "setup ran"', **launch}}
    path = work / "site.yaml"
    path.write_text(dump_yaml(data))
    return str(path)


def _bash_n(script: str, folder) -> None:
    path = os.path.join(str(folder), "check.sbatch")
    with open(path, "w") as f:
        f.write(script)
    done = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _run(script_path, stubs: Stubs, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script_path)], cwd=str(cwd), env=stubs.env(**env),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_training_script_with_hostile_paths_and_values_runs_only_the_expected_commands(site, tmp_path, launcher):
    outcome = run_command(["submit", _config(site, launcher), "--dry-run"])
    assert outcome.code == 0, outcome.stderr
    script = outcome.stdout.partition("# ---- per-rank commands")[0]
    _bash_n(script, tmp_path)
    log_dir = str(site / f"run {HOSTILE}" / "slurm")
    tasks = 1 if launcher == "torchrun" else 2
    assert directives(script) == [
        "--job-name=genlip", "--nodes=1", f"--ntasks-per-node={tasks}", f"--cpus-per-task={16 // tasks}",
        "--time=10", f"--output={log_dir}/%x-%j.out", "--open-mode=append", "--requeue",
        f"--chdir={site}", "--signal=B:USR1@60", f"--comment={HOSTILE}"]
    config_path = outcome.stdout.split("(config frozen to ")[1].split(") ----")[0]

    script_path = tmp_path / "job.sbatch"
    script_path.write_text(script)
    stubs = Stubs(tmp_path)
    before = _files(site)
    done = _run(script_path, stubs, site)
    assert done.returncode == 0, done.stderr
    job_dir = os.path.join(log_dir, "4242")
    entry = "node.sh" if launcher == "torchrun" else "rank.sh"
    assert stubs.calls() == [
        ["scontrol", "show", "hostnames", "node0"],
        ["srun", f"--ntasks-per-node={tasks}", "--kill-on-bad-exit=1", f"--output={job_dir}/node-%n.log",
         "bash", f"{job_dir}/{entry}", config_path]]
    assert _files(site) - before == {os.path.relpath(os.path.join(job_dir, n), site) for n in ("node.sh", "rank.sh")}
    assert "setup ran" in done.stdout and (tmp_path / "activated.log").exists()  # by design: the site's shell
    assert not _markers(tmp_path)


def test_node_and_rank_scripts_pass_the_arguments_through_unchanged(site, tmp_path):
    outcome = run_command(["submit", _config(site), "--dry-run"])
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(outcome.stdout.partition("# ---- per-rank commands")[0])
    stubs = Stubs(tmp_path)
    assert _run(script_path, stubs, site).returncode == 0
    job_dir = site / f"run {HOSTILE}" / "slurm" / "4242"
    config_path = f"{job_dir}/../{HOSTILE}.yaml"
    assert subprocess.run(["bash", str(job_dir / "node.sh"), config_path], env=stubs.env(MASTER_ADDR="node0",
                          MASTER_PORT="29500"), capture_output=True, timeout=60).returncode == 0
    assert subprocess.run(["bash", str(job_dir / "rank.sh"), config_path], env=stubs.env(RANK="0"),
                          capture_output=True, timeout=60).returncode == 0
    torchrun, python = stubs.calls()[-2:]
    assert torchrun == ["torchrun", "--nnodes=1", "--nproc-per-node=2", "--node-rank=0", "--master-addr=node0",
                        "--master-port=29500", "--max-restarts=0", "--no-python", "bash", f"{job_dir}/rank.sh",
                        config_path]
    assert python == ["python", "-m", "genlip_megatron.cli", "train", config_path]
    assert (job_dir / "rank-00000.log").exists() and (job_dir / "exit-0").read_text() == "0\n"
    assert not _markers(tmp_path)


def test_a_stopped_rank_requeues_the_job_reading_latest_from_the_hostile_run_folder(site, tmp_path):
    outcome = run_command(["submit", _config(site), "--dry-run"])
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(outcome.stdout.partition("# ---- per-rank commands")[0])
    run_dir = site / f"run {HOSTILE}"
    run_dir.mkdir()
    (run_dir / "latest").write_text("iter_0000007\n")
    stubs = Stubs(tmp_path)
    done = _run(script_path, stubs, site, STUB_RANK_EXIT="75")
    assert done.returncode == 0, done.stderr
    assert stubs.calls()[-1] == ["scontrol", "requeue", "4242"]
    assert "requeueing; resumes from iter_0000007" in done.stdout
    assert not _markers(tmp_path)


def test_container_options_are_single_arguments(site, tmp_path):
    outcome = run_command(["submit", _config(site, venv="", container_image=f"nvcr.io#img`touch${{IFS}}{MARK}`",
                                             container_mounts=["/scratch:/scratch"]), "--dry-run"])
    assert outcome.code == 0, outcome.stderr
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(outcome.stdout.partition("# ---- per-rank commands")[0])
    _bash_n(script_path.read_text(), tmp_path)
    stubs = Stubs(tmp_path)
    assert _run(script_path, stubs, site).returncode == 0
    srun = stubs.calls()[-1]
    assert f"--container-image=nvcr.io#img`touch${{IFS}}{MARK}`" in srun
    assert f"--container-workdir={site}" in srun
    mounts = next(a for a in srun if a.startswith("--container-mounts="))
    assert mounts.startswith("--container-mounts=/scratch:/scratch,") and f"{site}:{site}" in mounts
    assert not _markers(tmp_path)


def test_real_submission_writes_only_inside_the_log_folder_and_calls_sbatch_with_the_script(
        site, tmp_path, monkeypatch):
    stubs = Stubs(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs.bin}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", stubs.log)
    config = _config(site)
    before = _files(site)
    outcome = run_command(["submit", config, "--chain", "2"])
    assert outcome.code == 0, outcome.stderr
    log_dir = site / f"run {HOSTILE}" / "slurm"
    new = {os.path.join(str(site), p) for p in _files(site) - before}
    assert all(os.path.dirname(p) == str(log_dir) for p in new) and len(new) == 2
    script = next(p for p in new if p.endswith(".sbatch"))
    assert stubs.calls() == [["sbatch", "--parsable", script],
                             ["sbatch", "--parsable", "--dependency=afterany:4242", script]]
    _bash_n(open(script).read(), tmp_path)
    assert not _markers(tmp_path)


def test_shard_array_and_merge_scripts_pass_hostile_build_arguments_as_words(site, tmp_path):
    args = f"in/*.tar --out {shlex.quote('o ' + HOSTILE)} --tokenizer tok.json"
    outcome = run_command(["submit", _config(site), "--shards", "4", "--max-parallel", "2",
                           "--shards-args", args, "--dry-run"])
    assert outcome.code == 0, outcome.stderr
    array, _, merge = outcome.stdout.partition("# ---- merge job (afterok: the array) ----\n")
    out_dir, log_dir = f"o {HOSTILE}", os.path.join(str(site), f"o {HOSTILE}", "slurm")
    for script in (array, merge):
        _bash_n(script, tmp_path)
    assert "--array=0-3%2" in directives(array) and f"--output={log_dir}/%x-%A_%a.out" in directives(array)
    assert "--job-name=genlip-merge" in directives(merge) and f"--chdir={site}" in directives(merge)
    stubs = Stubs(tmp_path)
    for script in (array, merge):
        path = tmp_path / "shards.sbatch"
        path.write_text(script)
        assert _run(path, stubs, site).returncode == 0
    build, merged = stubs.calls()
    assert build == ["srun", "python", "-m", "genlip_megatron.cli", "shards", "build", "in/*.tar", "--out", out_dir,
                     "--tokenizer", "tok.json", "--task-index", "3", "--num-tasks", "4", "--workers", "8",
                     "--no-progress"]
    assert merged == ["srun", "python", "-m", "genlip_megatron.cli", "shards", "merge", out_dir]
    assert not _markers(tmp_path)


# The renderer itself, with validation bypassed: what config/ranges.py refuses must still be safe.
@pytest.mark.parametrize("field", ["partition", "account", "qos", "job_name", "time"])
def test_renderer_carries_any_one_line_value_of_a_directive_exactly(tmp_path, field):
    cfg = load_config("tiny_cpu", ["train.device=cpu", f"checkpoint.dir={tmp_path}/run"])
    render.resolve_paths(cfg, str(tmp_path))
    setattr(cfg.launch, field, HOSTILE + " \\ \\\" end")
    script = render.train_script(cfg, str(tmp_path / "c.yaml"), str(tmp_path), dependency=None)
    _bash_n(script, tmp_path)
    option = "--job-name" if field == "job_name" else f"--{field}"
    assert f"{option}={HOSTILE} \\ \\\" end" in directives(script)


@pytest.mark.parametrize("value", ["gpu\n#SBATCH --wrap=x", "gpu\rx", "gpu\x00x"])
def test_renderer_refuses_what_an_sbatch_line_cannot_carry(tmp_path, value):
    cfg = load_config("tiny_cpu", ["train.device=cpu", f"checkpoint.dir={tmp_path}/run"])
    render.resolve_paths(cfg, str(tmp_path))
    cfg.launch.partition = value
    with pytest.raises(QuotingError, match="launch.partition: holds a"):
        render.train_script(cfg, str(tmp_path / "c.yaml"), str(tmp_path))


def test_sbatch_quoting_matches_the_real_sbatch(tmp_path):
    """The local SLURM cluster (make slurm) reads our quoted directives back to the same values."""
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        pytest.skip("no SLURM controller on this machine (make slurm starts one)")
    odd = tmp_path / HOSTILE
    odd.mkdir()
    name = "a \"b\" \\c #d 'e' $(f) `g`"
    script = tmp_path / "probe.sbatch"
    script.write_text("\n".join(["#!/bin/bash", sbatch_directive("--job-name", name),
                                 sbatch_directive("--chdir", str(odd)),
                                 sbatch_directive("--output", f"{odd}/%j.out"),
                                 sbatch_directive("--comment", HOSTILE), "#SBATCH --hold", "#SBATCH --time=1",
                                 "true", ""]))
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout
    job = job.strip().split(";")[0]
    try:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["scancel", job], check=False)
    assert f"JobName={name}\n" in shown
    assert f"WorkDir={odd}\n" in shown and f"StdOut={odd}/{job}.out\n" in shown
    assert f"Comment={HOSTILE} " in shown or f"Comment={HOSTILE}\n" in shown
    assert not _markers(tmp_path)


@pytest.mark.parametrize("args,needle", [
    (["launch.job_name=../../x"], "launch.job_name='../../x' must be a plain name"),
    (["launch.partition=gpu\n#SBATCH --wrap=touch"], "launch.partition="),
    (["launch.log_dir=logs\nx"], "launch.log_dir="),
    (["--dependency", "afterok:1\n#SBATCH --wrap=x"], "--dependency="),
    (["--dependency", f"afterok:1 $(touch {MARK})"], "is not an sbatch dependency"),
])
def test_unrenderable_values_are_refused_before_anything_is_written(site, tmp_path, monkeypatch, args, needle):
    stubs = Stubs(tmp_path)
    monkeypatch.setenv("PATH", f"{stubs.bin}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", stubs.log)
    config = _config(site)
    before = _files(tmp_path)
    overrides = [a for a in args if "=" in a and not a.startswith("afterok")]
    flags = [a for a in args if a not in overrides]
    outcome = run_command(["submit", config, *overrides, *flags])
    assert outcome.code == 2
    errors = outcome.error_lines()
    assert len(errors) == 1 and needle in errors[0], outcome.stderr
    assert _files(tmp_path) == before and stubs.calls() == []
    assert not _markers(tmp_path)


def test_sbatch_value_leaves_plain_words_unquoted():
    assert sbatch_value("04:00:00") == "04:00:00" and sbatch_value("a b") == '"a b"'
