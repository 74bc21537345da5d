"""Tests of stopping early: the process-group check and the Slurm walltime deadline."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from training_helpers import (
    ENV,
    accelerate_launch,
    cli_train,
    dataset_fixture,  # noqa: F401
    launch,
    read_log,
)

from markup2im.cli import main as cli_main
from markup2im.errors import ConfigError
from markup2im.training.checkpoints import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_process_of_many_that_runs_alone_is_refused() -> None:
    from markup2im.training.stopping import check_process_group

    check_process_group(1, {})
    check_process_group(1, {"WORLD_SIZE": "1"})
    check_process_group(2, {"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match=r"process 1 of 2 .*single process.*ACCELERATE_USE_CPU=1"):
        check_process_group(1, {"WORLD_SIZE": "2", "RANK": "1"})


def test_slurm_job_end_from_the_environment_or_squeue() -> None:
    from markup2im.training.stopping import parse_slurm_time, slurm_job_end, walltime_deadline

    stamp = "2026-12-01T23:10:00"
    expected = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    assert parse_slurm_time(stamp) == expected
    for text in ("N/A", "Unknown", "NONE", "UNLIMITED", ""):
        assert parse_slurm_time(text) is None
    calls = []

    def squeue(output: str, status: int = 0):
        def run(command, **kwargs):
            calls.append(command)
            return subprocess.CompletedProcess(command, status, stdout=output, stderr="boom")

        return run

    assert slurm_job_end({}, squeue(stamp)) is None and not calls  # not in a Slurm job
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": "1800000000"}
    assert slurm_job_end(env, squeue(stamp)) == 1800000000.0 and not calls  # Slurm >= 23.02
    env = {"SLURM_JOB_ID": "42"}
    assert slurm_job_end(env, squeue(stamp + "\n")) == expected
    assert calls == [["squeue", "-h", "-j", "42", "-o", "%e"]]
    assert slurm_job_end(env, squeue("UNLIMITED\n")) is None
    assert slurm_job_end(env, squeue("", status=1)) is None

    def missing(command, **kwargs):
        raise FileNotFoundError("squeue")

    assert slurm_job_end(env, missing) is None
    assert walltime_deadline(300, env, squeue(stamp)) == (expected - 300, expected)
    with pytest.raises(ConfigError, match="walltime margin"):
        walltime_deadline(-1, env, squeue(stamp))


def test_walltime_margin_flag_stops_before_the_slurm_limit(
    tmp_path: Path, dataset_dir: Path, monkeypatch, capsys
) -> None:
    """`markup2im train --walltime-margin` in a Slurm job whose limit is near: one step, a
    checkpoint, status 143, and a message that says why."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 30))
    out = tmp_path / "run"
    command = cli_train(dataset_dir, out, "--max-steps", "5", "--walltime-margin", "600")[3:]
    assert cli_main(command) == 143
    err = capsys.readouterr().err
    assert re.search(r"stopping \d+ s before the Slurm time limit \(.*\) at step 1;", err), err
    assert "--resume latest" in err and "Traceback" not in err, err
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1]
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert cli_main([*command[:-2], "--resume", "latest"]) == 0
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_processes_of_a_multi_gpu_launch_without_cuda_refuse_to_train_alone(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """`accelerate launch --multi_gpu` where CUDA is missing starts processes that each run
    alone (DistributedType.NO): they stop at once instead of training N separate models."""
    out = tmp_path / "run"
    done = launch(accelerate_launch(2, cli_train(dataset_dir, out, "--max-steps", "2")[3:]), ENV)
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"started as process {rank} of 2 (WORLD_SIZE=2)" in done.stderr, done.stderr[-4000:]
    assert "ACCELERATE_USE_CPU=1" in done.stderr
    assert "markup2im train: error:" in done.stderr  # a project error, printed without traceback
    assert not (out / "checkpoints").exists() and not (out / "model").exists()
    assert not (out / "train_log.csv").exists()
