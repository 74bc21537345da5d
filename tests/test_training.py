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
    LOG_COLUMNS,
    EpochSampler,
    TrainConfig,
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


@pytest.mark.slow
def test_two_processes_train_and_write_one_model(tmp_path: Path, dataset_dir: Path) -> None:
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    # `accelerate launch --cpu` starts a single process; --multi_gpu runs torchrun, and the
    # trainer forms a gloo process group when there is no CUDA.
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0", "-m", "markup2im",  # a free port, chosen when it binds
        *cli_train(dataset_dir, out, "--max-steps", "3", "--checkpoint-every", "2")[3:],
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert f"process {rank} of 2: finished 3 steps" in done.stderr, done.stderr[-4000:]
    assert (out / "model").is_dir()
    assert len([p for p in out.iterdir() if "model" in p.name]) == 1  # no stray temp copies
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2]
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl",
    ]  # fmt: skip
    assert len(read_log(out / "train_log.csv")) == 3  # one writer
