"""Tests of the training log: losses read back every log_every steps, a row for every step."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import (
    assert_same_weights,
    dataset_fixture,  # noqa: F401
    read_log,
    tiny,
)

from markup2im.training.config import DEFAULT_LOG_EVERY, TrainConfig
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


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
