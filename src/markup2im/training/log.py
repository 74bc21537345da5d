"""The training log: ``train_log.csv`` (one row per optimizer step), TensorBoard, and the loss
history that tells a sane checkpoint from one taken after the loss blew up."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from markup2im.atomic import atomic_path
from markup2im.names import LOG_COLUMNS

logger = logging.getLogger(__name__)

SANE_LOSS_FACTOR = 100.0  # a checkpoint is sane while its loss is at most this x the running loss
RUNNING_LOSS_WINDOW = 50  # steps in the running (median) loss


class LossHistory:
    """The loss of every step so far (the reference that tells a sane checkpoint)."""

    def __init__(self, losses: dict[int, float] | None = None) -> None:
        self.losses: dict[int, float] = dict(losses or {})

    def add(self, step: int, loss: float) -> None:
        self.losses[step] = loss

    def running(self, step: int) -> float:
        """Median loss of the RUNNING_LOSS_WINDOW steps up to ``step`` (nan when none)."""
        window = [
            self.losses[s]
            for s in range(max(1, step - RUNNING_LOSS_WINDOW + 1), step + 1)
            if s in self.losses and math.isfinite(self.losses[s])
        ]
        return statistics.median(window) if window else math.nan

    def is_sane(self, loss: float, step: int) -> bool:
        """Whether ``loss`` (computed with the weights after ``step``) is finite and within
        SANE_LOSS_FACTOR of the running loss up to ``step``."""
        reference = self.running(step)
        return math.isfinite(loss) and (
            not math.isfinite(reference) or loss <= SANE_LOSS_FACTOR * reference
        )


@dataclass
class StepRecord:
    """A finished step whose loss may still be on the device."""

    step: int
    epoch: int
    loss: torch.Tensor
    lr: float
    ss_prob: float
    m: int
    seconds: float

    def row(self, loss: float) -> list[Any]:
        """The step's row of train_log.csv (LOG_COLUMNS) with its loss read back."""
        return [self.step, self.epoch, f"{loss:.8g}", f"{self.lr:.8g}", f"{self.ss_prob:.6g}",
                self.m, f"{self.seconds:.3f}"]  # fmt: skip


def read_log(log_path: Path, up_to_step: int | None) -> list[list[str]]:
    """The CSV log's rows up to a resumed step (none when starting afresh)."""
    rows: list[list[str]] = []
    if up_to_step is not None and log_path.is_file():
        with log_path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                if len(row) == len(LOG_COLUMNS) and row[0].isdigit():
                    if int(row[0]) <= up_to_step:
                        rows.append(row)
    return rows


def rewrite_log(log_path: Path, rows: list[list[str]]) -> None:
    """Start the CSV log afresh with ``rows`` (those of a resumed run up to its step)."""
    with atomic_path(log_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_COLUMNS)
        writer.writerows(rows)


def loss_history(rows: list[list[str]]) -> LossHistory:
    """The losses of a log's rows."""
    losses = {}
    for row in rows:
        with contextlib.suppress(ValueError):
            losses[int(row[0])] = float(row[LOG_COLUMNS.index("loss")])
    return LossHistory(losses)


def tensorboard_writer(output_dir: Path) -> Any:
    """A TensorBoard SummaryWriter in output_dir/tensorboard when tensorboard is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


class TrainingLog:
    """The run's steps as they are read back: CSV rows, TensorBoard scalars, the loss history.

    Only the main process writes (``write``); every process keeps the history.
    """

    def __init__(self, output_dir: Path, write: bool) -> None:
        self.output_dir, self.write = output_dir, write
        self.path = output_dir / "train_log.csv"
        self.history = LossHistory()
        self.pending: list[StepRecord] = []  # steps whose loss has not been read back yet
        self.last_loss = math.nan
        self._file: Any = None
        self._csv: Any = None
        self._tensorboard: Any = None

    def kept_rows(self, resumed_step: int | None) -> list[list[str]]:
        """The rows of a resumed run up to its step (none for a fresh start); sets the history."""
        rows = read_log(self.path, resumed_step)
        self.history = loss_history(rows)
        return rows

    def open(self) -> None:
        """Start appending (after :func:`rewrite_log` has left the kept rows)."""
        if self.write:
            self._file = self.path.open("a", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._tensorboard = tensorboard_writer(self.output_dir)

    def close(self) -> None:
        for handle in (self._file, self._tensorboard):
            if handle is not None:
                handle.close()

    def record(self, losses: list[float]) -> tuple[StepRecord, float] | None:
        """Log the pending steps with their read-back losses and forget them; the first step
        whose loss is not finite stops the logging and is returned with its loss (None when
        every loss is finite)."""
        for pending, loss in zip(self.pending, losses, strict=True):
            self.history.add(pending.step, loss)
            if not math.isfinite(loss):
                self.pending.clear()
                return pending, loss
            self.last_loss = loss
            if self._csv is not None:
                self._csv.writerow(pending.row(loss))
            if self._tensorboard is not None:
                for key, scalar in (
                    ("loss", loss),
                    ("lr", pending.lr),
                    ("ss_prob", pending.ss_prob),
                ):
                    self._tensorboard.add_scalar(f"train/{key}", scalar, pending.step)
        if self._file is not None:
            self._file.flush()
        self.pending.clear()
        return None
