"""Tests of the checkpoints: the EMA's device slot, unwrapped weights, and which checkpoint a
run resumes from, refuses, sets aside or keeps (real runs of the tiny preset)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import (
    assert_same_weights,
    build_dataset,
    dataset_fixture,  # noqa: F401
    max_weight,
    read_log,
    tiny,
)

from markup2im.errors import ConfigError, TrainingDivergedError
from markup2im.training.checkpoints import EMAOnDevice, list_checkpoints
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_checkpoint_weights_are_unwrapped_and_old_prefixed_ones_load() -> None:
    from markup2im.training.checkpoints import unwrapped_state

    weights = {"conv.weight": 1, "conv.bias": 2}
    assert unwrapped_state({f"module.{k}": v for k, v in weights.items()}) == weights
    assert unwrapped_state(weights) == weights
    mixed = {"module.a": 1, "b": 2}  # not a DDP state dict: left alone
    assert unwrapped_state(mixed) == mixed


def test_resume_none_refuses_to_mix_runs(tmp_path: Path, dataset_dir: Path) -> None:
    out = tmp_path / "run"
    train(tiny(dataset_dir, out, max_steps=2))
    with pytest.raises(ConfigError, match="--resume latest"):
        train(tiny(dataset_dir, out, max_steps=2))
    with pytest.raises(ConfigError, match="batch_size"):
        train(tiny(dataset_dir, out, max_steps=2, batch_size=4, resume="latest"))


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


@pytest.mark.parametrize("where", ["state", "record"])
def test_a_full_disk_during_a_save_is_a_clear_error_and_leaves_no_partial_checkpoint(
    tmp_path: Path, dataset_dir: Path, monkeypatch, where: str
) -> None:
    """ENOSPC in the middle of a checkpoint ended in a raw OSError traceback (exit 1) and left
    the half-written .tmp-checkpoint behind."""
    import errno

    from accelerate import Accelerator

    from markup2im.errors import Markup2ImError
    from markup2im.training import checkpoints

    def full(path: Path) -> OSError:
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.safetensors").write_bytes(b"half")  # what got written before the disk filled
        return OSError(errno.ENOSPC, "No space left on device", str(path))

    save_state, write_json = Accelerator.save_state, checkpoints.write_json

    def failing_state(self, output_dir=None, **kwargs):
        if str(output_dir).endswith("checkpoint-4"):
            raise full(Path(output_dir))
        return save_state(self, output_dir, **kwargs)

    def failing_record(path, value):
        if path.parent.name.endswith("checkpoint-4"):
            raise full(path.parent)
        return write_json(path, value)

    if where == "state":
        monkeypatch.setattr(Accelerator, "save_state", failing_state)
    else:
        monkeypatch.setattr(checkpoints, "write_json", failing_record)
    out = tmp_path / "run"
    with pytest.raises(checkpoints.CheckpointSaveError) as info:
        train(tiny(dataset_dir, out, max_steps=4, checkpoint_every=2))
    assert isinstance(info.value, Markup2ImError)  # the CLI prints it and exits 2
    message = str(info.value)
    assert message.startswith(
        f"cannot save checkpoint-4 in {out / 'checkpoints'}: the disk is full"
    )
    assert "the newest complete one, checkpoint-2, is kept" in message
    assert "free space on that disk" in message and "--resume latest" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert not (out / "model").exists()


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


def test_resumed_ema_lands_on_the_model_device(
    tmp_path: Path, dataset_dir: Path, monkeypatch
) -> None:
    """Resuming loads the EMA through its device slot, onto the model's device, and the resumed
    run equals an uninterrupted one. (The EMA used to be moved to the device before loading,
    and the loaded CPU tensors then met CUDA weights at its first step.)"""
    import markup2im.training.checkpoints as training

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
