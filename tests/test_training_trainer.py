"""Tests of the Trainer: real training runs of the tiny preset on a tiny drawn dataset (the
model, log and checkpoints it writes, the methods, EMA, bf16, divergence, and runs that stop
on a signal, a deadline or across processes and resume bit-identically)."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import (
    CPU_PROCESSES,
    ENV,
    SIGNAL_RUN,
    accelerate_launch,
    assert_same_weights,
    checkpoint_keys,
    cli_train,
    dataset_fixture,  # noqa: F401
    launch,
    max_weight,
    model_weights,
    read_log,
    tiny,
    whole_run_fixture,  # noqa: F401
)

from markup2im.cli import main as cli_main
from markup2im.errors import DataError
from markup2im.names import LOG_COLUMNS
from markup2im.training.checkpoints import list_checkpoints
from markup2im.training.stopping import TrainingInterrupted
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_writes_model_log_and_checkpoints(tmp_path: Path, dataset_dir: Path) -> None:
    from markup2im.model import Markup2ImModel

    out = tmp_path / "run"
    result = train(tiny(dataset_dir, out, checkpoints_total_limit=1))
    assert result.steps == 4 and math.isfinite(result.final_loss)
    rows = read_log(out / "train_log.csv")
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    # warm-up from 0 over 2 steps, then cosine to 0 over the remaining 2
    lrs = [float(r["lr"]) for r in rows]
    np.testing.assert_allclose(lrs, [0.0, 5e-4, 1e-3, 5e-4], rtol=1e-6, atol=1e-12)
    # ss_prob ramps 0.5 -> 1.0 with p = (step - 1) / 4
    np.testing.assert_allclose([float(r["ss_prob"]) for r in rows], [0.5, 0.625, 0.75, 0.875])
    assert {int(r["m"]) for r in rows} <= {0, 1}
    assert [int(r["epoch"]) for r in rows] == [0, 0, 0, 0]  # 8 examples / batch 2 = 4 steps
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    # only the newest checkpoint is kept; no temporary directories left
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [4]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    model = Markup2ImModel.from_pretrained(out / "model")
    assert (model.height, model.width, model.channels) == (64, 64, 1)
    assert model.domain == "tables"  # recorded in markup2im_model.json


def test_logged_m_are_exactly_the_seeded_draws(tmp_path: Path, dataset_dir: Path) -> None:
    """The m of every step is the one its seeds give, and rollouts do happen."""
    from markup2im.scheduled_sampling import ScheduledSamplingConfig, draw_timesteps_and_m
    from markup2im.training.data import derive_seed

    out = tmp_path / "run"
    config = tiny(
        dataset_dir, out, max_steps=16, ss_start=(0.3,), ss_end=(0.9,), checkpoint_every=100
    )
    train(config)
    rows = read_log(out / "train_log.csv")
    ss = ScheduledSamplingConfig.from_settings(start=(0.3,), end=(0.9,))
    expected = [
        draw_timesteps_and_m(
            ss, step / 16, 2, 1000, torch.Generator().manual_seed(derive_seed(1234, 0, step))
        )[1]
        for step in range(16)
    ]
    assert [int(r["m"]) for r in rows] == expected
    assert 4 <= sum(expected) <= 14  # P(m = 1) ramps 0.3 -> 0.9: both values occur


def test_baseline_and_scheduled_sampling_train_different_models(
    tmp_path: Path, dataset_dir: Path
) -> None:
    common = dict(max_steps=6, checkpoint_every=100)
    train(tiny(dataset_dir, tmp_path / "ss", ss_start=(1.0,), ss_end=(1.0,), **common))
    train(tiny(dataset_dir, tmp_path / "base", method="baseline", ss_start=None, ss_end=None,
               **common))  # fmt: skip
    ss, base = model_weights(tmp_path / "ss" / "model"), model_weights(tmp_path / "base" / "model")
    assert any(not torch.equal(ss[k], base[k]) for k in ss)
    assert {r["m"] for r in read_log(tmp_path / "ss" / "train_log.csv")} == {"1"}


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_prediction_type_and_trained_encoder_are_saved(
    tmp_path: Path, dataset_dir: Path, kind: str
) -> None:
    from markup2im.model import Markup2ImModel
    from markup2im.models.encoder import MarkupEncoder

    out = tmp_path / "run"
    train(tiny(dataset_dir, out, prediction_type=kind, train_encoder=True, max_steps=4))
    model = Markup2ImModel.from_pretrained(out / "model")
    assert model.scheduler_config["prediction_type"] == kind
    # the encoder learned: its saved weights are no longer the built-in offline ones
    offline = MarkupEncoder.build_offline(64).model.state_dict()
    saved = model.encoder.model.state_dict()
    assert any(not torch.equal(saved[k], offline[k]) for k in offline)
    # and resumable: the checkpoint holds the trained encoder's weights
    states = [
        torch.load(f, weights_only=False)
        for f in sorted((out / "checkpoints" / "checkpoint-4").glob("custom_checkpoint_*.pkl"))
    ]
    held = [st for st in states if isinstance(st, dict) and st.keys() == saved.keys()]
    assert held and all(torch.equal(held[0][k], saved[k]) for k in saved)


def test_baseline_with_ema_and_accumulation(tmp_path: Path, dataset_dir: Path) -> None:
    from markup2im.model import Markup2ImModel

    out = tmp_path / "run"
    result = train(
        tiny(dataset_dir, out, method="baseline", ss_start=None, ss_end=None, ema=True,
             ema_decay=0.5, gradient_accumulation_steps=3, max_steps=None, epochs=2)
    )  # fmt: skip
    # 4 batches per epoch in groups of 3 (the last group shorter) -> 2 optimizer steps per epoch
    assert result.steps == 4
    rows = read_log(out / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 0, 1, 1]
    assert {r["m"] for r in rows} == {"0"} and {r["ss_prob"] for r in rows} == {"0"}
    # the saved weights are the EMA, not the last training weights
    from diffusers.training_utils import EMAModel

    checkpoint = out / "checkpoints" / "checkpoint-4"
    trained = load_file(checkpoint / "model.safetensors")
    saved = model_weights(out / "model")
    assert any(not torch.equal(saved[k], trained[k]) for k in saved)
    ema_state = torch.load(checkpoint / "custom_checkpoint_2.pkl", weights_only=False)
    model = Markup2ImModel.from_pretrained(out / "model")
    ema = EMAModel(list(model.trainable_parameters()))
    ema.load_state_dict(ema_state)
    for name_param, shadow in zip(
        model.denoiser.named_parameters(), ema.shadow_params, strict=True
    ):
        assert torch.equal(name_param[1], shadow), name_param[0]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: reset it around a test that
    trains with another."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_bf16_trains_on_cpu_with_the_encoder_under_the_same_autocast(
    tmp_path: Path, dataset_dir: Path
) -> None:
    seen: dict[str, set] = {"encoder": set(), "denoiser": set()}

    def record(module, args):
        # accelerate's autocast wraps the denoiser's forward, inside its hooks: look at its
        # convolutions (the offline encoder has none)
        kind = {"BertModel": "encoder", "Conv2d": "denoiser"}.get(type(module).__name__)
        if kind is not None:
            enabled = torch.is_autocast_enabled("cpu")
            seen[kind].add((enabled, torch.get_autocast_dtype("cpu") if enabled else None))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        result = train(tiny(dataset_dir, tmp_path / "bf16", mixed_precision="bf16", max_steps=4))
    finally:
        handle.remove()
    assert math.isfinite(result.final_loss)
    assert all(
        math.isfinite(float(r["loss"])) for r in read_log(tmp_path / "bf16" / "train_log.csv")
    )
    assert seen["denoiser"] == {(True, torch.bfloat16)}
    assert seen["encoder"] == {(True, torch.bfloat16)}
    weights = model_weights(tmp_path / "bf16" / "model")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert {w.dtype for w in weights.values()} == {torch.float32}  # fp32 master weights


def test_channels_last_trains_about_the_same_model(tmp_path: Path, dataset_dir: Path) -> None:
    train(tiny(dataset_dir, tmp_path / "a", checkpoint_every=100))
    train(tiny(dataset_dir, tmp_path / "b", checkpoint_every=100, channels_last=True))
    a, b = model_weights(tmp_path / "a" / "model"), model_weights(tmp_path / "b" / "model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_torch_threads_are_left_as_given(tmp_path: Path, dataset_dir: Path, caplog) -> None:
    """The workflow gives each process threads // gpus (accelerate launch
    --num_cpu_threads_per_process); training keeps whatever torch was given."""
    assert torch.get_num_threads() == 1  # the one_thread fixture
    with caplog.at_level("INFO", logger="markup2im.training"):
        train(tiny(dataset_dir, tmp_path / "run", max_steps=1))
    assert torch.get_num_threads() == 1
    assert any("1 torch threads" in r.getMessage() for r in caplog.records)


def test_nan_loss_says_what_to_run_and_that_command_works(
    tmp_path: Path, dataset_dir: Path, capsys
) -> None:
    """After an absurd learning rate no checkpoint is sane (their weights are huge), the message
    says so and gives a command; that command trains afresh. Before, every later run refused:
    --resume latest for the changed learning rate, --resume none for the checkpoints."""
    out = tmp_path / "run"
    command = cli_train(dataset_dir, out, "--learning-rate", "1e6", "--warmup-steps", "0",
                        "--checkpoint-every", "1", "--max-steps", "200")[3:]  # fmt: skip
    assert cli_main(command) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert re.search(r"loss became (nan|inf)|weights became non-finite", err), err
    assert "No checkpoint of this run is sane" in err, err
    assert not list_checkpoints(out / "checkpoints")  # nothing left to resume by mistake
    diverged = sorted((out / "checkpoints").glob("diverged-checkpoint-*"))
    assert diverged and max_weight(diverged[0]) > 1e3  # what "last good" used to point at
    assert not (out / "model").exists()
    suggested = shlex.split(err.rsplit("run:\n", 1)[1].strip().splitlines()[0])
    assert suggested[:2] == ["markup2im", "train"]
    assert suggested[-4:] == ["--learning-rate", "100000", "--resume", "auto"]
    assert suggested.count("--learning-rate") == 1 and suggested.count("--resume") == 1
    # the suggested command, with a learning rate that works (last flags win) and fewer steps
    assert cli_main([*suggested[1:], "--learning-rate", "1e-3", "--max-steps", "3"]) == 0
    assert (out / "model").is_dir()
    (stale,) = out.glob("checkpoints.stale-*")
    assert sorted(p.name for p in stale.glob("diverged-checkpoint-*")) == [p.name for p in diverged]
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3]


def test_input_perturbation_trains_another_model_and_resumes_bit_identically(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """The perturbation changes what is learned (a method that ignored gamma would train the
    baseline's model), and it is drawn from the step's generator: a run resumed from its
    checkpoint ends with the uninterrupted run's weights."""
    common = dict(method="input_perturbation", ss_start=None, ss_end=None, max_steps=6,
                  checkpoint_every=3, checkpoints_total_limit=None)  # fmt: skip
    whole = tmp_path / "whole"
    train(tiny(dataset_dir, whole, ip_gamma=0.5, **common))
    base = tmp_path / "base"
    train(tiny(dataset_dir, base, **{**common, "method": "baseline"}))
    ip, plain = model_weights(whole / "model"), model_weights(base / "model")
    assert any(not torch.equal(ip[k], plain[k]) for k in ip)
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints" / "checkpoint-3", cut / "checkpoints" / "checkpoint-3")
    rows = (whole / "train_log.csv").read_text(encoding="utf-8").splitlines()
    (cut / "train_log.csv").write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")
    train(tiny(dataset_dir, cut, resume="latest", ip_gamma=0.5, **common))
    assert_same_weights(whole / "model", cut / "model")


def test_resume_mid_epoch_with_ema_equals_uninterrupted(tmp_path: Path, dataset_dir: Path) -> None:
    settings = dict(ema=True, ema_decay=0.7, gradient_accumulation_steps=2, max_steps=None,
                    epochs=3, checkpoint_every=3, checkpoints_total_limit=None)  # fmt: skip
    whole = tmp_path / "whole"
    assert train(tiny(dataset_dir, whole, **settings)).steps == 6  # 2 steps per epoch
    # a run that stopped after step 3 (in the middle of epoch 1): its checkpoint and log only
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints" / "checkpoint-3", cut / "checkpoints" / "checkpoint-3")
    rows = (whole / "train_log.csv").read_text(encoding="utf-8").splitlines()
    (cut / "train_log.csv").write_text("\n".join(rows[:5]) + "\n", encoding="utf-8")
    train(tiny(dataset_dir, cut, resume="latest", **settings))
    assert_same_weights(whole / "model", cut / "model")
    cut_rows, whole_rows = read_log(cut / "train_log.csv"), read_log(whole / "train_log.csv")
    assert [r["step"] for r in cut_rows] == ["1", "2", "3", "4", "5", "6"]
    assert [(r["epoch"], r["loss"], r["lr"]) for r in cut_rows] == [
        (r["epoch"], r["loss"], r["lr"]) for r in whole_rows
    ]


def test_a_second_trainer_in_the_same_directory_stops_at_once(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """While one training runs in a directory, a second process training there stops with
    exit status 2 and a message naming the first, and changes nothing; the first, stopped by
    SIGTERM, releases the lock (it used to share the checkpoints with the second)."""
    out = tmp_path / "run"
    steps = ["--max-steps", "100000", "--checkpoint-every", "100000", "--log-every", "1"]
    first = subprocess.Popen(
        cli_train(dataset_dir, out, *steps), env=ENV, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 600  # against a hang only
        while not (out / "train_log.csv").is_file() or not read_log(out / "train_log.csv"):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "no logged step"
            time.sleep(0.05)
        second = subprocess.run(cli_train(dataset_dir, out, *steps), env=ENV,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr[-4000:]
        assert f"is in use by another training, PID {first.pid} on host" in second.stderr
        assert f"kill {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert "process 0 of 1 (" not in second.stderr  # stopped before building anything
        assert first.poll() is None  # the first trains on
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 143, stderr[-4000:]
    assert not (out / ".markup2im_train.lock").exists()
    assert len(list_checkpoints(out / "checkpoints")) == 1  # the first's, on SIGTERM


def test_the_lock_is_released_when_training_fails(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(DataError):
        train(tiny(tmp_path / "no-such-dataset", out))
    assert out.is_dir() and not (out / ".markup2im_train.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_then_resume_equals_uninterrupted_run(
    tmp_path: Path, dataset_dir: Path, whole_run: Path, signum: int, status: int
) -> None:
    """SIGTERM (Slurm, `kill`) and SIGINT (Ctrl-C) both checkpoint; the resumed run ends with
    the uninterrupted run's weights. The signal goes out on the first logged step, with the
    trainer stopped meanwhile, so no timing decides where it lands."""
    steps = ["--max-steps", "40", "--checkpoint-every", "5", "--checkpoints-total-limit", "2"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli_train(dataset_dir, killed, *steps), env=ENV, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 600  # against a hang only
        while (
            not (killed / "train_log.csv").is_file() or len(read_log(killed / "train_log.csv")) < 1
        ):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no logged step"
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)  # the pending signal is handled after SIGCONT
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, stderr
    name = signal.Signals(signum).name
    assert f"interrupted by a signal ({name})" in stderr and "--resume latest" in stderr
    assert not (killed / "model").exists()
    stopped_at = list_checkpoints(killed / "checkpoints")[-1][0]
    assert stopped_at < 40, "the signal arrived after the last step"
    assert int(read_log(killed / "train_log.csv")[-1]["step"]) == stopped_at

    train(tiny(dataset_dir, killed, resume="latest", **SIGNAL_RUN))
    assert_same_weights(whole_run / "model", killed / "model")
    # the log continues without duplicate steps and equals the uninterrupted one
    whole_rows, killed_rows = (
        read_log(whole_run / "train_log.csv"),
        read_log(killed / "train_log.csv"),
    )
    assert [r["step"] for r in killed_rows] == [str(s) for s in range(1, 41)]
    assert [r["loss"] for r in killed_rows] == [r["loss"] for r in whole_rows]
    assert [r["m"] for r in killed_rows] == [r["m"] for r in whole_rows]


@pytest.mark.slow
def test_deadline_stops_at_a_step_with_a_checkpoint_and_resumes_bit_identically(
    tmp_path: Path, dataset_dir: Path, whole_run: Path, monkeypatch, caplog
) -> None:
    """The deadline passes during step 7 (a fake clock, read at the start and once per step):
    the run stops after it as on SIGUSR1, with a checkpoint, and its continuation equals the
    uninterrupted run."""
    import markup2im.training.stopping as stopping

    deadline = 1_000_000.0
    ticks = iter([deadline - 1] * (1 + 6) + [deadline + 5] * 100)
    monkeypatch.setattr(stopping, "_now", lambda: next(ticks))
    out = tmp_path / "run"
    config = tiny(dataset_dir, out, deadline=deadline, time_limit=deadline + 65, **SIGNAL_RUN)
    with (
        caplog.at_level("WARNING", logger="markup2im.training"),
        pytest.raises(TrainingInterrupted) as info,
    ):
        train(config)
    assert info.value.step == 7 and info.value.exit_code == 143
    assert "stopping 60 s before the Slurm time limit" in str(info.value)
    assert "--resume latest" in str(info.value)
    assert any("stopping 60 s before the Slurm time limit" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert [s for s, _ in list_checkpoints(out / "checkpoints")][-1] == 7
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == list(range(1, 8))
    assert not (out / "model").exists()
    train(tiny(dataset_dir, out, resume="latest", **SIGNAL_RUN))
    assert_same_weights(whole_run / "model", out / "model")
    rows, whole_rows = read_log(out / "train_log.csv"), read_log(whole_run / "train_log.csv")
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]


@pytest.mark.slow
def test_two_processes_stop_together_and_resume_as_one(tmp_path: Path, dataset_dir: Path) -> None:
    """Two processes reach the walltime margin: they agree at the read-back (step 2) and stop
    together with one checkpoint of unwrapped weights, which one process then resumes."""
    out = tmp_path / "ddp"
    steps = ["--max-steps", "4", "--checkpoint-every", "2"]
    env = {**CPU_PROCESSES, "SLURM_JOB_ID": "77", "SLURM_JOB_END_TIME": str(int(time.time()) + 60)}
    done = launch(
        accelerate_launch(2, cli_train(dataset_dir, out, *steps, "--walltime-margin", "600")[3:]),
        env,
    )
    assert done.returncode != 0, done.stderr[-4000:]
    assert done.stderr.count("before the Slurm time limit (") >= 2, done.stderr[-4000:]
    assert len(re.findall(r"markup2im train: stopping \d+ s .* at step 2;", done.stderr)) == 2
    for rank in (0, 1):
        assert re.search(rf"process {rank} of 2 \(cpu[:0-9]*, 1 torch threads\)", done.stderr)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2]
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    keys = checkpoint_keys(checkpoint)
    assert keys and not [k for k in keys if k.startswith("module.")]
    assert json.loads((checkpoint / "markup2im_train.json").read_text())["world_size"] == 2
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2]  # one writer
    assert not (out / "model").exists()

    # one process, given 2 threads by accelerate, resumes the two processes' checkpoint
    # (accelerate sets OMP_NUM_THREADS; a MKL_NUM_THREADS in the environment would cap torch)
    env = {k: v for k, v in ENV.items() if k != "MKL_NUM_THREADS"}
    done = launch(accelerate_launch(1, cli_train(dataset_dir, out, *steps, "--resume", "latest")
                                    [3:], threads=2), env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "written by 2 processes, resuming with 1" in done.stderr
    assert re.search(r"process 0 of 1 \(cpu[:0-9]*, 2 torch threads\)", done.stderr), done.stderr
    assert "resuming at step 2" in done.stderr and "finished 4 steps" in done.stderr
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3, 4]
    assert (out / "model").is_dir()


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_processes(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """A single-process checkpoint, resumed by two processes with --resume latest, which train
    on and write one model, one log and one checkpoint with a random state per process."""
    out = tmp_path / "run"
    train(tiny(dataset_dir, out, max_steps=4, checkpoint_every=2, checkpoints_total_limit=None))
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "model")
    rows = (out / "train_log.csv").read_text(encoding="utf-8").splitlines()
    (out / "train_log.csv").write_text("\n".join(rows[:3]) + "\n", encoding="utf-8")
    steps = ["--max-steps", "4", "--checkpoint-every", "2", "--resume", "latest"]
    done = launch(accelerate_launch(2, cli_train(dataset_dir, out, *steps)[3:]), CPU_PROCESSES)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "written by 1 processes, resuming with 2" in done.stderr
    for rank in (0, 1):
        assert f"process {rank} of 2: finished 4 steps" in done.stderr, done.stderr[-4000:]
    assert (out / "model").is_dir()
    assert len([p for p in out.iterdir() if "model" in p.name]) == 1  # no stray temp copies
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    assert not [k for k in checkpoint_keys(checkpoint) if k.startswith("module.")]
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3, 4]  # one writer
