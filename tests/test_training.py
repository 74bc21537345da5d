"""Tests of the training loop: real training runs of the tiny preset on a tiny drawn dataset."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from markup2im.cli import main as cli_main
from markup2im.data.datasets import DatasetInfo, write_dataset_info
from markup2im.errors import ConfigError, DataError, TrainingDivergedError
from markup2im.training import (
    DEFAULT_LOG_EVERY,
    LOG_COLUMNS,
    EMAOnDevice,
    EpochSampler,
    TrainConfig,
    TrainingInterrupted,
    list_checkpoints,
    train,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def drawn_example(i: int) -> tuple[str, Image.Image]:
    """A 64x64 grayscale image of a few black rectangles and the markup that describes it."""
    rng = np.random.default_rng(i)
    image = Image.new("L", (64, 64), 255)
    draw = ImageDraw.Draw(image)
    cells = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(2, 40, size=2))
        w, h = (int(v) for v in rng.integers(4, 20, size=2))
        draw.rectangle([x, y, x + w, y + h], fill=0)
        cells.append(f"<td>{x},{y},{w},{h}</td>")
    return f"<table><tr>{''.join(cells)}</tr></table>", image


def build_dataset(root: Path, sizes: dict[str, int], bad: dict[int, object] | None = None) -> Path:
    """A tiny tables-like dataset directory; ``bad`` replaces train images by index."""
    features = datasets.Features(
        {"html": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits, offset = {}, 0
    for split, n in sizes.items():
        rows = {"html": [], "filename": [], "image": []}
        for i in range(n):
            markup, image = drawn_example(offset + i)
            if split == "train" and bad and i in bad:
                image = bad[i]
            rows["html"].append(markup)
            rows["filename"].append(f"{split}{i:03d}.png")
            rows["image"].append(image)
        offset += n
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("tables", "html", 64, 64, 1))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(
        tmp_path_factory.mktemp("data") / "tables", {"train": 8, "validation": 2, "test": 3}
    )


def tiny(dataset: Path, output: Path, **overrides: object) -> TrainConfig:
    settings: dict = dict(
        dataset_dir=dataset,
        output_dir=output,
        method="scheduled_sampling",
        model_preset="tiny",
        encoder="offline",
        max_markup_length=64,
        batch_size=2,
        max_steps=4,
        warmup_steps=2,
        learning_rate=1e-3,
        checkpoint_every=2,
        ss_start=(0.5,),
        ss_end=(1.0,),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def model_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((model_dir / "denoiser").glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    return weights


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


def cli_train(dataset: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "markup2im", "train", "--dataset-dir", str(dataset),
        "--output-dir", str(output), "--method", "scheduled_sampling", "--model-preset", "tiny",
        "--encoder", "offline", "--max-markup-length", "64", "--batch-size", "2",
        "--warmup-steps", "2", "--learning-rate", "1e-3", "--ss-start", "0.5", "--ss-end", "1.0",
        *extra,
    ]  # fmt: skip


# ---- pieces -------------------------------------------------------------------------------


def test_epoch_sampler_shards_a_seeded_permutation() -> None:
    shards = []
    for rank in range(3):
        sampler = EpochSampler(10, seed=42, rank=rank, world_size=3)
        sampler.set_epoch(1)
        shards.append(sampler.indices())
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set().union(*shards) == set(range(10))  # every example, two repeated as padding
    sampler = EpochSampler(10, seed=42, rank=0, world_size=1)
    sampler.set_epoch(1)
    first = sampler.indices()
    sampler.set_epoch(1, skip=3)
    assert sampler.indices() == first[3:] and len(sampler) == 7
    sampler.set_epoch(2)
    assert sampler.indices() != first and sorted(sampler.indices()) == list(range(10))


def test_invalid_settings_raise_config_error(tmp_path: Path, dataset_dir: Path) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        train(tiny(dataset_dir, tmp_path / "a", learning_rate=float("nan")))
    with pytest.raises(ConfigError, match="baseline"):
        train(tiny(dataset_dir, tmp_path / "b", method="baseline"))
    with pytest.raises(ConfigError, match="unknown model preset"):
        train(tiny(dataset_dir, tmp_path / "c", model_preset="huge"))


# ---- real runs ----------------------------------------------------------------------------


def test_train_writes_model_log_and_checkpoints(tmp_path: Path, dataset_dir: Path) -> None:
    from markup2im.pipeline import Markup2ImModel

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
    from markup2im.training import derive_seed

    out = tmp_path / "run"
    config = tiny(
        dataset_dir, out, max_steps=16, ss_start=(0.3,), ss_end=(0.9,), checkpoint_every=100
    )
    train(config)
    rows = read_log(out / "train_log.csv")
    ss = ScheduledSamplingConfig.for_method("scheduled_sampling", start=(0.3,), end=(0.9,))
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
    from markup2im.models.encoder import MarkupEncoder
    from markup2im.pipeline import Markup2ImModel

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


def test_resume_none_refuses_to_mix_runs(tmp_path: Path, dataset_dir: Path) -> None:
    out = tmp_path / "run"
    train(tiny(dataset_dir, out, max_steps=2))
    with pytest.raises(ConfigError, match="--resume latest"):
        train(tiny(dataset_dir, out, max_steps=2))
    with pytest.raises(ConfigError, match="batch_size"):
        train(tiny(dataset_dir, out, max_steps=2, batch_size=4, resume="latest"))


def test_baseline_with_ema_and_accumulation(tmp_path: Path, dataset_dir: Path) -> None:
    from markup2im.pipeline import Markup2ImModel

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


def test_corrupt_and_wrong_size_images_name_the_example(tmp_path: Path) -> None:
    corrupt = build_dataset(
        tmp_path / "corrupt",
        {"train": 4, "test": 1},
        bad={2: {"bytes": b"not a png", "path": None}},
    )
    with pytest.raises(DataError, match=r"example 2 \(train002.png\).*cannot decode"):
        train(tiny(corrupt, tmp_path / "a"))
    wrong = build_dataset(
        tmp_path / "wrong", {"train": 4, "test": 1}, bad={1: Image.new("L", (32, 64), 255)}
    )
    with pytest.raises(DataError, match=r"example 1 \(train001.png\).*32x64"):
        train(tiny(wrong, tmp_path / "b"))


def max_weight(checkpoint: Path) -> float:
    return max(float(t.abs().max()) for t in load_file(checkpoint / "model.safetensors").values())


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


def test_the_last_sane_checkpoint_is_named_and_kept(tmp_path: Path, dataset_dir: Path) -> None:
    """Warm-up makes step 1's learning rate 0, so checkpoint-1 holds the initial weights; from
    step 2 on the absurd rate ruins them. Pruning to one checkpoint still keeps checkpoint-1."""
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        train(
            tiny(dataset_dir, out, learning_rate=1e6, warmup_steps=2, checkpoint_every=1,
                 checkpoints_total_limit=1, max_steps=200, epochs=100)
        )  # fmt: skip
    message = str(info.value)
    assert f"The last sane checkpoint is {out / 'checkpoints' / 'checkpoint-1'}" in message
    assert "--learning-rate 100000 --resume auto" in message
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1]
    assert max_weight(out / "checkpoints" / "checkpoint-1") < 100
    diverged = list((out / "checkpoints").glob("diverged-checkpoint-*"))
    assert diverged and all(max_weight(d) > 1e3 for d in diverged)
    record = json.loads((out / "checkpoints" / "checkpoint-1" / "markup2im_train.json").read_text())
    assert record["sane"] is True and math.isfinite(record["check_loss"])
    assert record["check_loss"] <= 100 * record["running_loss"]


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


SIGNAL_RUN = dict(max_steps=40, checkpoint_every=5, checkpoints_total_limit=2)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    """An uninterrupted run in this process (same settings as the signalled ones, one thread)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    train(tiny(dataset_dir, out, **SIGNAL_RUN))
    return out


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


def test_resume_auto_sets_aside_checkpoints_of_other_settings_or_data(
    tmp_path: Path, dataset_dir: Path
) -> None:
    """Resuming on another dataset used to continue silently; now --resume latest refuses and
    --resume auto (the workflow's) moves the checkpoints aside and starts afresh."""
    out = tmp_path / "run"
    train(tiny(dataset_dir, out, max_steps=2))
    other = build_dataset(tmp_path / "other", {"train": 6, "validation": 1, "test": 1})
    with pytest.raises(ConfigError, match=r"dataset differs.*train 8.*train 6.*--resume auto"):
        train(tiny(other, out, max_steps=2, resume="latest"))
    assert list_checkpoints(out / "checkpoints")  # refused: nothing moved

    result = train(tiny(other, out, max_steps=2, resume="auto"))
    assert result.steps == 2
    (stale,) = out.glob("checkpoints.stale-*")
    assert re.fullmatch(r"checkpoints\.stale-\d{8}-\d{6}", stale.name)
    assert [s for s, _ in list_checkpoints(stale)] == [2]
    assert (stale / "train_log.csv").is_file()
    record = json.loads((out / "checkpoints" / "checkpoint-2" / "markup2im_train.json").read_text())
    assert record["dataset"]["splits"]["train"] == 6 and record["dataset"]["path"] == str(other)

    # other settings: the same
    train(tiny(other, out, max_steps=2, learning_rate=5e-4, resume="auto"))
    assert len(list(out.glob("checkpoints.stale-*"))) == 2
    # the same settings and data: resumed (nothing left to do), nothing moved
    assert train(tiny(other, out, max_steps=2, learning_rate=5e-4, resume="auto")).steps == 2
    assert len(list(out.glob("checkpoints.stale-*"))) == 2


def test_a_damaged_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, dataset_dir: Path, caplog
) -> None:
    settings = dict(max_steps=4, checkpoint_every=2, checkpoints_total_limit=None)
    whole = tmp_path / "whole"
    train(tiny(dataset_dir, whole, **settings))
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints", cut / "checkpoints")
    shutil.copy(whole / "train_log.csv", cut / "train_log.csv")
    weights = cut / "checkpoints" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a write cut short
    with caplog.at_level("WARNING", logger="markup2im.training"):
        train(tiny(dataset_dir, cut, resume="latest", **settings))
    damaged = cut / "checkpoints" / "checkpoint-4"
    assert any(f"checkpoint {damaged} is damaged" in r.getMessage() for r in caplog.records)
    assert (cut / "checkpoints" / "damaged-checkpoint-4").is_dir()
    assert_same_weights(whole / "model", cut / "model")  # resumed from checkpoint-2
    assert [int(r["step"]) for r in read_log(cut / "train_log.csv")] == [1, 2, 3, 4]

    # an unreadable record is damage too; with every checkpoint damaged, auto starts afresh
    again = tmp_path / "again"
    shutil.copytree(whole / "checkpoints", again / "checkpoints")
    for record in (again / "checkpoints").glob("checkpoint-*/markup2im_train.json"):
        record.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="every checkpoint is damaged.*--resume auto"):
        train(tiny(dataset_dir, again, resume="latest", **settings))
    for path in list((again / "checkpoints").glob("damaged-*")):
        path.rename(path.with_name(path.name.removeprefix("damaged-")))
    train(tiny(dataset_dir, again, resume="auto", **settings))
    assert_same_weights(whole / "model", again / "model")
    assert list(again.glob("checkpoints.stale-*"))

    # every checkpoint fails to load: auto builds the model afresh (failed loads may have
    # changed it) and trains from scratch, to the same weights
    broken = tmp_path / "broken"
    shutil.copytree(whole / "checkpoints", broken / "checkpoints")
    for weights in (broken / "checkpoints").glob("checkpoint-*/model.safetensors"):
        weights.write_bytes(b"")
    train(tiny(dataset_dir, broken, resume="auto", **settings))
    assert_same_weights(whole / "model", broken / "model")
    (stale,) = broken.glob("checkpoints.stale-*")
    assert sorted(p.name for p in stale.iterdir() if p.is_dir()) == [
        "damaged-checkpoint-2",
        "damaged-checkpoint-4",
    ]


# ---- several processes (real `accelerate launch` runs on the CPU) --------------------------

# `accelerate launch --cpu` starts a single process; --multi_gpu runs torchrun, and with
# ACCELERATE_USE_CPU=1 the processes form a gloo group on the CPU (DistributedType.MULTI_CPU)
CPU_PROCESSES = {**ENV, "ACCELERATE_USE_CPU": "1"}


def accelerate_launch(processes: int, train_args: list[str], threads: int = 1) -> list[str]:
    accelerate = Path(sys.executable).with_name("accelerate")
    flags = ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads)]  # fmt: skip
    if processes > 1:
        flags += ["--multi_gpu", "--main_process_port", "0"]  # port 0: a free one
    return [str(accelerate), "launch", *flags, "-m", "markup2im", *train_args]


def launch(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def checkpoint_keys(checkpoint: Path) -> list[str]:
    return list(load_file(checkpoint / "model.safetensors"))


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


# ---- GPU-readiness: what a CUDA run needs, tested on the CPU ------------------------------


def test_ema_slot_loads_the_shadow_weights_onto_the_device() -> None:
    """accelerate loads registered objects as CPU tensors; the EMA's slot moves them."""
    from diffusers.training_utils import EMAModel

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    state = EMAModel(params, decay=0.5).state_dict()
    plain = EMAModel(params, decay=0.5)
    plain.load_state_dict(state)
    assert {s.device.type for s in plain.shadow_params} == {"cpu"}  # what broke a GPU resume
    ema = EMAModel(params, decay=0.5)
    slot = EMAOnDevice(ema, "meta")  # a device other than the state's, as cuda would be
    slot.load_state_dict(state)
    assert {s.device.type for s in ema.shadow_params} == {"meta"}
    assert slot.state_dict()["decay"] == 0.5


def test_resumed_ema_lands_on_the_model_device(
    tmp_path: Path, dataset_dir: Path, monkeypatch
) -> None:
    """Resuming loads the EMA through its device slot, onto the model's device, and the resumed
    run equals an uninterrupted one. (The EMA used to be moved to the device before loading,
    and the loaded CPU tensors then met CUDA weights at its first step.)"""
    import markup2im.training as training

    settings = dict(ema=True, ema_decay=0.7, max_steps=4, checkpoint_every=2,
                    checkpoints_total_limit=None)  # fmt: skip
    whole = tmp_path / "whole"
    train(tiny(dataset_dir, whole, **settings))
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints" / "checkpoint-2", cut / "checkpoints" / "checkpoint-2")
    loads = []
    original = training.EMAOnDevice.load_state_dict

    def recording_load(self, state):
        original(self, state)
        loads.append((self.device, {s.device for s in self.ema.shadow_params}))

    monkeypatch.setattr(training.EMAOnDevice, "load_state_dict", recording_load)
    train(tiny(dataset_dir, cut, resume="latest", **settings))
    assert loads == [(torch.device("cpu"), {torch.device("cpu")})]  # the model's device here
    assert_same_weights(whole / "model", cut / "model")


def test_checkpoint_weights_are_unwrapped_and_old_prefixed_ones_load() -> None:
    from markup2im.training import unwrapped_state

    weights = {"conv.weight": 1, "conv.bias": 2}
    assert unwrapped_state({f"module.{k}": v for k, v in weights.items()}) == weights
    assert unwrapped_state(weights) == weights
    mixed = {"module.a": 1, "b": 2}  # not a DDP state dict: left alone
    assert unwrapped_state(mixed) == mixed


def test_resume_auto_treats_another_process_count_as_other_settings(
    tmp_path: Path, dataset_dir: Path, caplog
) -> None:
    """latest loads a checkpoint of another process count (with a warning); auto sets it aside
    (the global batch differs) and trains afresh."""
    out = tmp_path / "run"
    train(tiny(dataset_dir, out, max_steps=4, checkpoints_total_limit=None))
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "model")
    record_path = out / "checkpoints" / "checkpoint-2" / "markup2im_train.json"
    record = json.loads(record_path.read_text())
    record["world_size"] = 2
    record_path.write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="markup2im.training"):
        train(tiny(dataset_dir, out, max_steps=4, resume="latest"))
    assert any("written by 2 processes, resuming with 1" in r.getMessage() for r in caplog.records)
    assert not list(out.glob("checkpoints.stale-*"))
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3, 4]

    train(tiny(dataset_dir, tmp_path / "other", max_steps=2))
    other = tmp_path / "other" / "checkpoints" / "checkpoint-2" / "markup2im_train.json"
    record = json.loads(other.read_text())
    record["world_size"] = 4
    other.write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="markup2im.training"):
        train(tiny(dataset_dir, tmp_path / "other", max_steps=2, resume="auto"))
    assert any("trained by 4 processes and this run has 1" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    (stale,) = (tmp_path / "other").glob("checkpoints.stale-*")
    assert [s for s, _ in list_checkpoints(stale)] == [2]


def test_a_process_of_many_that_runs_alone_is_refused() -> None:
    from markup2im.training import check_process_group

    check_process_group(1, {})
    check_process_group(1, {"WORLD_SIZE": "1"})
    check_process_group(2, {"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match=r"process 1 of 2 .*single process.*ACCELERATE_USE_CPU=1"):
        check_process_group(1, {"WORLD_SIZE": "2", "RANK": "1"})


def original_lrs(warmup: int, total: int, processes: int) -> list[float]:
    """The original's learning rates: a diffusers schedule of total x N steps, prepared by
    accelerate, which steps it N times per optimizer step."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total * processes)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        for _ in range(processes):
            scheduler.step()
    return lrs


def our_lrs(warmup: int, total: int, processes: int) -> list[float]:
    from markup2im.training import lr_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_schedule(optimizer, warmup, total, processes)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.step()
    return lrs


def test_warmup_per_process_is_the_original_schedule_on_n_processes() -> None:
    """Music on 4 GPUs: the original warmed up over 125 optimizer steps, ours over 500."""
    ours = our_lrs(500, 2000, 1)
    assert ours == original_lrs(500, 2000, 1)  # one process: the same schedule
    assert ours[500] == 1.0 and ours[499] < 1.0
    per_process = our_lrs(500, 2000, 4)
    np.testing.assert_allclose(per_process, original_lrs(500, 2000, 4), rtol=1e-12, atol=1e-15)
    assert per_process[125] == 1.0 and per_process[124] < 1.0
    assert per_process[-1] < 1e-5  # the cosine still ends at the end of training
    np.testing.assert_allclose(our_lrs(3, 10, 2), original_lrs(3, 10, 2), rtol=1e-12)


def test_warmup_per_process_changes_nothing_for_one_process(
    tmp_path: Path, dataset_dir: Path
) -> None:
    train(tiny(dataset_dir, tmp_path / "a", checkpoint_every=100))
    train(tiny(dataset_dir, tmp_path / "b", checkpoint_every=100, warmup_per_process=True))
    assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")


def test_losses_are_read_back_every_n_steps_and_every_step_is_logged(
    tmp_path: Path, dataset_dir: Path, monkeypatch
) -> None:
    """One read-back (all processes' losses and the stop flags at once) per log_every steps,
    and at checkpoints and the end; the log still has a row per step and the run is the same."""
    from accelerate import Accelerator

    reads: list[int] = []
    original_reduce = Accelerator.reduce

    def counting_reduce(self, tensor, *args, **kwargs):
        if tensor.ndim == 1 and tensor.numel() > 2:  # not the checkpoint's check loss
            reads.append(tensor.numel() - 2)  # pending losses + the two stop flags
        return original_reduce(self, tensor, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "reduce", counting_reduce)
    every = tiny(dataset_dir, tmp_path / "every", max_steps=8, checkpoint_every=100, log_every=1)
    train(every)
    assert reads == [1] * 8
    reads.clear()
    train(tiny(dataset_dir, tmp_path / "three", max_steps=8, checkpoint_every=5, log_every=3))
    assert reads == [3, 2, 1, 2]  # steps 3, 5 (checkpoint), 6, 8 (the end)
    assert_same_weights(tmp_path / "every" / "model", tmp_path / "three" / "model")
    a, b = (
        read_log(tmp_path / "every" / "train_log.csv"),
        read_log(tmp_path / "three" / "train_log.csv"),
    )
    assert [int(r["step"]) for r in b] == list(range(1, 9))
    assert [(r["loss"], r["lr"], r["m"], r["ss_prob"]) for r in a] == [
        (r["loss"], r["lr"], r["m"], r["ss_prob"]) for r in b
    ]
    assert DEFAULT_LOG_EVERY == TrainConfig.__dataclass_fields__["log_every"].default


def test_step_draws_equal_prepare_step_on_cpu_and_use_the_noise_generator() -> None:
    from markup2im.diffusion import NoiseSchedule
    from markup2im.pipeline import DEFAULT_SCHEDULER_CONFIG
    from markup2im.scheduled_sampling import (
        ScheduledSamplingConfig,
        draw_timesteps_and_m,
        prepare_step,
    )
    from markup2im.training import draw_step, noise_generator

    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    config = ScheduledSamplingConfig(max_m=2, start=(0.5, 0.5), end=(0.5, 0.5))
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    weight = torch.randn(1)

    def eps_model(x, t):
        return x * weight + t.float()[:, None, None, None] / 1000

    for seed in range(6):
        a = prepare_step(eps_model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed))
        b = draw_step(eps_model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed))
        assert a.m == b.m and torch.equal(a.timesteps, b.timesteps)
        assert torch.equal(a.x_t, b.x_t) and torch.equal(a.target, b.target)
        # a separate noise generator (the CUDA path): the same t and m, its own noise
        c = draw_step(
            eps_model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed),
            torch.Generator().manual_seed(1000 + seed),
        )  # fmt: skip
        t, m = draw_timesteps_and_m(config, 0.5, 3, 1000, torch.Generator().manual_seed(seed))
        assert c.m == m and torch.equal(c.timesteps, t)
        assert not torch.equal(c.x_t, a.x_t)
    assert noise_generator(1, torch.device("cpu")) is None


def test_worker_tokens_encode_as_the_model_does(tmp_path: Path) -> None:
    from markup2im.pipeline import Markup2ImModel
    from markup2im.training import encode_tokens

    model = Markup2ImModel.from_config(model_preset="tiny", encoder="offline", height=64,
                                       width=64, channels=1, max_markup_length=16)  # fmt: skip
    markups = ["<td>1</td>", "x" * 40, ""]
    hidden, mask = model.encode(markups)
    ids, token_mask = model.encoder.tokenize(markups)
    again, again_mask = encode_tokens(model.encoder, ids, token_mask)
    assert torch.equal(hidden, again) and torch.equal(mask, again_mask)


@pytest.mark.parametrize("workers", [2])
def test_workers_persist_across_epochs_and_train_the_same_model(
    tmp_path: Path, dataset_dir: Path, workers: int
) -> None:
    """Workers decode and tokenise, live across epochs, and change nothing in the result."""
    settings = dict(max_steps=None, epochs=2, checkpoint_every=100)
    train(tiny(dataset_dir, tmp_path / "main", **settings))
    train(tiny(dataset_dir, tmp_path / "workers", num_workers=workers, **settings))
    assert_same_weights(tmp_path / "main" / "model", tmp_path / "workers" / "model")


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


def test_fused_adamw_only_where_every_parameter_is_on_a_gpu() -> None:
    from markup2im.training import adamw_options

    assert adamw_options([torch.nn.Parameter(torch.zeros(2))]) == {}
    assert adamw_options([]) == {}


def test_channels_last_trains_about_the_same_model(tmp_path: Path, dataset_dir: Path) -> None:
    train(tiny(dataset_dir, tmp_path / "a", checkpoint_every=100))
    train(tiny(dataset_dir, tmp_path / "b", checkpoint_every=100, channels_last=True))
    a, b = model_weights(tmp_path / "a" / "model"), model_weights(tmp_path / "b" / "model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_markup_buckets_pad_to_a_few_lengths() -> None:
    from markup2im.training import bucket_length, markup_buckets

    assert markup_buckets(1025) == (32, 64, 128, 256, 512, 1025)  # paper: 1024 tokens + end
    assert markup_buckets(65) == (32, 65)
    assert markup_buckets(20) == (20,)
    assert [bucket_length(n, 1025) for n in (1, 32, 33, 100, 513, 1025)] == [
        32, 32, 64, 128, 1025, 1025,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="longer than the limit"):
        bucket_length(1026, 1025)


def test_padded_markup_gives_the_unpadded_output_and_padding_is_masked() -> None:
    from markup2im.models.denoiser import MarkupUNet
    from markup2im.presets import get_model_preset
    from markup2im.training import pad_markup

    torch.manual_seed(0)
    denoiser = MarkupUNet.from_preset(get_model_preset("tiny"), height=64, width=64, channels=1,
                                      cross_attention_dim=16, max_text_positions=65).eval()  # fmt: skip
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([10, 900])
    hidden = torch.randn(2, 7, 16)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    hidden = hidden * mask[..., None]
    with torch.no_grad():
        plain = denoiser(x, t, hidden, mask)
        padded_hidden, padded_mask = pad_markup(hidden, mask, 32)
        assert padded_hidden.shape == (2, 32, 16) and padded_mask.shape == (2, 32)
        assert not padded_mask[:, 7:].any() and torch.equal(padded_hidden[:, :7], hidden)
        padded = denoiser(x, t, padded_hidden, padded_mask)
        # garbage where the mask is False changes nothing: the mask is respected
        garbage = padded_hidden.clone()
        garbage[~padded_mask] = 1e3
        masked = denoiser(x, t, garbage, padded_mask)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(masked, plain, rtol=1e-4, atol=1e-5)
    assert pad_markup(hidden, mask, 7)[0] is hidden


def test_encoder_cache_encodes_each_example_once(tmp_path: Path) -> None:
    from markup2im.pipeline import Markup2ImModel
    from markup2im.training import Batch, EncoderCache, encode_tokens

    model = Markup2ImModel.from_config(model_preset="tiny", encoder="offline", height=64,
                                       width=64, channels=1, max_markup_length=32)  # fmt: skip
    markups = ["<td>1</td>", "a much longer piece of markup", "x", "<tr></tr>"]

    def batch(indices: list[int]) -> Batch:
        ids, mask = model.encoder.tokenize([markups[i] for i in indices])
        return Batch(indices, [markups[i] for i in indices], torch.zeros(len(indices)), ids, mask)

    cache = EncoderCache(lambda ids, mask: encode_tokens(model.encoder, ids, mask))
    for indices in ([0, 1], [2, 0], [3, 1, 2, 0]):
        hidden, mask = cache(batch(indices))
        want, want_mask = model.encode([markups[i] for i in indices])
        assert torch.equal(mask, want_mask) and hidden.shape == want.shape
        torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-6)
    assert cache.encoded == 4  # each example once


def test_cache_encoder_trains_about_the_same_model(tmp_path: Path, dataset_dir: Path) -> None:
    settings = dict(max_steps=None, epochs=2, checkpoint_every=100)
    train(tiny(dataset_dir, tmp_path / "a", **settings))
    train(tiny(dataset_dir, tmp_path / "b", cache_encoder=True, **settings))
    a, b = model_weights(tmp_path / "a" / "model"), model_weights(tmp_path / "b" / "model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    with pytest.raises(ConfigError, match="cache_encoder"):
        train(tiny(dataset_dir, tmp_path / "c", cache_encoder=True, train_encoder=True))


def test_torch_threads_are_left_as_given(tmp_path: Path, dataset_dir: Path, caplog) -> None:
    """The workflow gives each process threads // gpus (accelerate launch
    --num_cpu_threads_per_process); training keeps whatever torch was given."""
    assert torch.get_num_threads() == 1  # the one_thread fixture
    with caplog.at_level("INFO", logger="markup2im.training"):
        train(tiny(dataset_dir, tmp_path / "run", max_steps=1))
    assert torch.get_num_threads() == 1
    assert any("1 torch threads" in r.getMessage() for r in caplog.records)


# ---- walltime -----------------------------------------------------------------------------


def test_slurm_job_end_from_the_environment_or_squeue() -> None:
    from markup2im.training import parse_slurm_time, slurm_job_end, walltime_deadline

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


@pytest.mark.slow
def test_deadline_stops_at_a_step_with_a_checkpoint_and_resumes_bit_identically(
    tmp_path: Path, dataset_dir: Path, whole_run: Path, monkeypatch, caplog
) -> None:
    """The deadline passes during step 7 (a fake clock, read at the start and once per step):
    the run stops after it as on SIGUSR1, with a checkpoint, and its continuation equals the
    uninterrupted run."""
    import markup2im.training as training

    deadline = 1_000_000.0
    ticks = iter([deadline - 1] * (1 + 6) + [deadline + 5] * 100)
    monkeypatch.setattr(training, "_now", lambda: next(ticks))
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


def test_cli_flags_reach_the_config_with_the_library_defaults(monkeypatch) -> None:
    """The new flags of `markup2im train` and their defaults (the CLI does not import torch,
    so it repeats them)."""
    import argparse

    import markup2im.cli.train as cli_module
    import markup2im.training as training

    parser = argparse.ArgumentParser()
    cli_module.add_parser(parser.add_subparsers())
    base = ["train", "--dataset-dir", "d", "--output-dir", "o", "--method", "baseline"]
    seen: list[TrainConfig] = []
    monkeypatch.setattr(training, "train", lambda config: seen.append(config))
    args = parser.parse_args(base)
    assert cli_module.run(args) == 0
    defaults = TrainConfig(dataset_dir=Path("d"), output_dir=Path("o"), method="baseline")
    assert seen[0] == dataclasses_replace(defaults, output_dir=seen[0].output_dir)
    args = parser.parse_args([*base, "--log-every", "50", "--warmup-per-process",
                              "--channels-last", "--compile", "--cache-encoder"])  # fmt: skip
    cli_module.run(args)
    assert (seen[1].log_every, seen[1].warmup_per_process, seen[1].channels_last,
            seen[1].compile, seen[1].cache_encoder) == (50, True, True, True, True)  # fmt: skip
    assert seen[1].deadline is None  # --walltime-margin outside Slurm: no deadline
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cli_module.run(parser.parse_args([*base, "--walltime-margin", "300"]))
    assert seen[2].deadline is None and seen[2].time_limit is None
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_JOB_END_TIME", "2000000000")
    cli_module.run(parser.parse_args([*base, "--walltime-margin", "300"]))
    assert (seen[3].deadline, seen[3].time_limit) == (2000000000 - 300, 2000000000)


def dataclasses_replace(config: TrainConfig, **changes: object) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
