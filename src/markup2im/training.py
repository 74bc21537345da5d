"""The training loop: baseline and scheduled-sampling DDPM training on HF accelerate.

One trainer serves both methods (baseline = scheduled-sampling weights 0, see
:mod:`markup2im.scheduled_sampling`). It runs as a plain process or under ``accelerate launch``
(one process per device, gradients averaged by DDP); the markup encoder is frozen and runs outside
the DDP wrapper, only the denoiser trains.

Defaults are the paper's: AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.01), 500
warm-up steps then cosine to 0, gradient-norm clip 1.0, batch 16 per process, 100 epochs, fp32, no
EMA, data-shuffle seed 42 and torch/numpy/random seed 1234. Unlike the original, the learning rate
is a float, only the main process writes files and every data-loader worker seeds numpy. The
original stepped its (accelerate-prepared) lr scheduler once per process per optimizer step, so
on N GPUs its warm-up took 500 / N optimizer steps; ours takes 500 whatever N, and
``warmup_per_process`` reproduces the original's (:func:`lr_schedule`).

Output directory::

    O/checkpoints/checkpoint-<step>/   Accelerator.save_state + markup2im_train.json (resume point)
    O/train_log.csv                    step, epoch, loss, lr, ss_prob, m, seconds (one row per step,
                                       written every ``log_every`` steps)
    O/model/                           the final Markup2ImModel.save_pretrained layout
    O/snapshots/step-<N>/              the model every --snapshot-every steps (when asked)

Reproducible and preemption-safe: the data order is a seeded permutation per epoch, and all
randomness of a step (t, m, noise, rollout noise) comes from a generator seeded by (seed, process,
step). A checkpoint therefore only needs the model, optimizer, lr scheduler, EMA and the position
(epoch, batches consumed); on CPU a run killed with SIGTERM and resumed ends with the same weights,
bit for bit, as an uninterrupted one. SIGTERM or SIGUSR1 (what Slurm sends before preempting)
and SIGINT (Ctrl-C; a second one stops at once) make the trainer finish its step, save a
checkpoint and raise :class:`TrainingInterrupted`; so does reaching ``deadline`` (``markup2im
train --walltime-margin``: a margin before the Slurm job's time limit, see :func:`slurm_job_end`).
With several processes the decision to stop is all-reduced, so they all stop at the same step.

Checkpoints hold the unwrapped denoiser's weights (no DDP ``module.`` prefix), so a run can
resume on another number of processes: ``--resume latest`` does, with a warning (the data order
per process and the global batch change); ``--resume auto`` (the workflow's) treats another
process count like other settings, since the global batch differs.

A checkpoint records the settings and a fingerprint of the dataset it was trained on. ``--resume
latest`` refuses a checkpoint of other settings or data; ``--resume auto`` then moves the
checkpoints aside to ``O/checkpoints.stale-<date>-<time>/`` and starts from scratch. A damaged
checkpoint is skipped with a warning (renamed ``damaged-checkpoint-<step>``) and the one before it
is used.

A non-finite loss raises TrainingDivergedError. A checkpoint counts as sane when the loss of
the last batch with its weights is finite and at most SANE_LOSS_FACTOR times the running loss
(recorded in its state file); the newest sane checkpoint is kept even past the pruning limit
while no newer one is sane, and after a divergence the later ones are renamed
``diverged-checkpoint-<step>`` so that resuming starts from the sane one.

On a GPU the step never waits for the device: t and m are drawn on the CPU (where m is needed),
the noise on the device from a generator seeded the same way, and the losses are read back, all
processes' at once, only every ``log_every`` steps and at checkpoints (where the stop decision is
also taken in multi-process runs). TF32 matmuls and cuDNN autotuning are on
(:func:`markup2im.cuda.configure_cuda`), AdamW is fused, and ``mixed_precision bf16`` runs the
denoiser and the frozen encoder under the same autocast. Options: ``channels_last``,
``compile`` (``torch.compile`` of the denoiser, markup states padded to a few lengths,
:func:`markup_buckets`, so that it compiles once per length) and ``cache_encoder`` (each
example's frozen-encoder output computed once and kept on the device). Data-loader workers
(``num_workers``) decode the images and tokenise the markup, and stay alive across epochs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import importlib.util
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch

from markup2im.atomic import atomic_path, write_json
from markup2im.data.datasets import DatasetInfo, dataset_fingerprint, load_split, read_dataset_info
from markup2im.diffusion import NoiseSchedule, check_prediction_type
from markup2im.errors import ConfigError, DataError, TrainingDivergedError
from markup2im.images import image_to_tensor, load_image
from markup2im.presets import DOMAINS
from markup2im.scheduled_sampling import (
    ScheduledSamplingConfig,
    StepInputs,
    build_inputs,
    draw_timesteps_and_m,
    step_loss,
)

logger = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "loss", "lr", "ss_prob", "m", "seconds")
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "markup2im_train.json"
MIXED_PRECISION = ("no", "fp16", "bf16")
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a process killed by SIGTERM reports
EXIT_KEYBOARD = 130  # 128 + SIGINT: what a shell reports for Ctrl-C
RESUME_MODES = ("none", "latest", "auto")
STALE_PREFIX = "checkpoints.stale-"  # checkpoints of other settings or data, set aside
DAMAGED_PREFIX = "damaged-"  # a checkpoint that could not be loaded
DIVERGED_PREFIX = "diverged-"  # a checkpoint saved after the loss had left its sane range
# Per-batch losses of small batches vary up to ~10x with the draw of t; weights ruined by an
# absurd learning rate give losses many orders of magnitude above the running loss.
SANE_LOSS_FACTOR = 100.0
RUNNING_LOSS_WINDOW = 50  # steps in the running (median) loss
# Reading the loss back waits for the device; every 10 steps costs a GPU little and keeps a CPU
# run's log and its divergence check at most 9 steps behind (the rows are still one per step).
DEFAULT_LOG_EVERY = 10
# Settings that change the speed, not what is trained (to float rounding): a run resumes with
# them changed.
SPEED_SETTINGS = ("log_every", "channels_last", "compile", "cache_encoder")
SMALLEST_BUCKET = 32  # the shortest padded markup length under --compile


class TrainingInterrupted(Exception):
    """Training stopped on a signal or at its deadline after saving a checkpoint; rerun with
    --resume latest."""

    def __init__(
        self,
        step: int,
        checkpoint: Path,
        signum: int = signal.SIGTERM,
        reason: str | None = None,
    ) -> None:
        what = reason or f"interrupted by a signal ({signal.Signals(signum).name})"
        super().__init__(
            f"{what} at step {step}; checkpoint saved in {checkpoint}; "
            "continue with --resume latest (or auto)"
        )
        self.step = step
        self.checkpoint = checkpoint
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """130 for Ctrl-C, 143 otherwise (what the shell would report for the signal)."""
        return EXIT_KEYBOARD if self.signum == signal.SIGINT else EXIT_INTERRUPTED


class _RestartFromScratch(Exception):
    """Every checkpoint failed to load after some state was already loaded: train afresh."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the CLI flags of ``markup2im train``)."""

    dataset_dir: Path
    output_dir: Path
    method: str = "baseline"
    model_preset: str = "paper"
    encoder: str | None = None  # None: the dataset domain's hub encoder (paper)
    max_markup_length: int | None = None  # None: the model preset's default
    prediction_type: str = "epsilon"  # the paper's; v_prediction or sample also work
    train_encoder: bool = False  # the paper freezes its pretrained encoders
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None: plain MSE (paper)
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_steps: int = 500
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 1234
    data_seed: int = 42
    ss_max_m: int = 1
    ss_start: tuple[float, ...] | None = None
    ss_end: tuple[float, ...] | None = None
    ss_min_t: int | None = None
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 3
    snapshot_every: int | None = None  # also save the model every N steps (learning curves)
    resume: str = "none"
    limit_train: int | None = None
    num_workers: int = 0  # data-loader workers (decode + tokenise), kept alive across epochs
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # the original's warm-up on N processes: its scheduler advanced N times per optimizer step
    warmup_per_process: bool = False
    log_every: int = DEFAULT_LOG_EVERY  # read the losses back (one host sync) every N steps
    channels_last: bool = False  # denoiser weights and images in channels-last memory format
    compile: bool = False  # torch.compile the denoiser; markup states padded to a few lengths
    cache_encoder: bool = False  # keep each example's frozen-encoder output (on the device)
    deadline: float | None = None  # unix time: checkpoint and stop at the first step after it
    time_limit: float | None = None  # the hard end behind ``deadline`` (messages only)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "checkpoint_every": self.checkpoint_every,
        }
        if self.max_markup_length is not None:
            positive["max_markup_length"] = self.max_markup_length
        if self.max_steps is not None:
            positive["max_steps"] = self.max_steps
        if self.limit_train is not None:
            positive["limit_train"] = self.limit_train
        if self.checkpoints_total_limit is not None:
            positive["checkpoints_total_limit"] = self.checkpoints_total_limit
        if self.snapshot_every is not None:
            positive["snapshot_every"] = self.snapshot_every
        positive["log_every"] = self.log_every
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"train: {key} must be >= 1, got {value}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(
                f"train: learning_rate must be a positive number, got {self.learning_rate}"
            )
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ConfigError("train: warmup_steps and num_workers must be >= 0")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"train: max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"train: mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                f"got {self.mixed_precision!r}"
            )
        if self.resume not in RESUME_MODES:
            raise ConfigError(
                f"train: resume must be one of {', '.join(RESUME_MODES)}, got {self.resume!r}"
            )
        check_prediction_type(self.prediction_type)
        if self.snr_gamma is not None and not (
            math.isfinite(self.snr_gamma) and self.snr_gamma > 0
        ):
            raise ConfigError(f"train: snr_gamma must be a positive number, got {self.snr_gamma}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"train: ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.cache_encoder and self.train_encoder:
            raise ConfigError(
                "train: cache_encoder keeps the encoder's outputs, which a trained encoder "
                "changes every step; drop cache_encoder or train_encoder"
            )
        for key in ("deadline", "time_limit"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"train: {key} must be a unix time, got {value}")

    def scheduled_sampling(self) -> ScheduledSamplingConfig:
        """The rollout weights of this run's method."""
        return ScheduledSamplingConfig.for_method(
            self.method,
            max_m=self.ss_max_m,
            start=self.ss_start,
            end=self.ss_end,
            min_t=self.ss_min_t,
        )

    def fingerprint(self) -> dict[str, Any]:
        """Settings a checkpoint can only be resumed with unchanged."""
        skip = {"dataset_dir", "output_dir", "resume", "checkpoint_every", "checkpoints_total_limit",
                "num_workers", "snapshot_every", *SPEED_SETTINGS, "deadline", "time_limit"}  # fmt: skip
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k not in skip
        }


@dataclass
class TrainResult:
    """What a finished run produced."""

    model_dir: Path
    steps: int
    final_loss: float
    world_size: int


# ---- data ---------------------------------------------------------------------------------


class MarkupImageDataset(torch.utils.data.Dataset):
    """(markup, image tensor) pairs of one split; images decoded lazily and size-checked."""

    def __init__(self, split: datasets.Dataset, info: DatasetInfo, label: str, limit: int | None):
        if limit is not None:
            split = split.select(range(min(limit, len(split))))
        for column in (info.markup_column, "filename", "image"):
            if column not in split.column_names:
                raise DataError(f"{label}: no column {column!r} (columns: {split.column_names})")
        self.markups: list[str] = [str(m) for m in split[info.markup_column]]
        self.filenames: list[str] = [str(f) for f in split["filename"]]
        self.images = split.select_columns(["image"]).cast_column(
            "image", datasets.Image(decode=False)
        )
        self.info = info
        self.label = label

    def __len__(self) -> int:
        return len(self.markups)

    def __getitem__(self, index: int) -> tuple[int, str, torch.Tensor]:
        name = f"{self.label} example {index} ({self.filenames[index]})"
        image = load_image(
            self.images[index]["image"],
            channels=self.info.channels,
            size=(self.info.width, self.info.height),
            name=name,
        )
        return index, self.markups[index], image_to_tensor(image)


class Batch(NamedTuple):
    """One batch as the data loader gives it (the tensors pinned on CUDA)."""

    indices: list[int]  # example indices (the encoder cache's keys)
    markups: list[str]
    images: torch.Tensor  # (B, C, H, W) in [-1, 1]
    input_ids: torch.Tensor  # (B, L) token ids, right-padded
    mask: torch.Tensor  # (B, L) bool, True at the attended tokens


class Collate:
    """Stack a batch and tokenise its markup; runs in the data-loader workers when there are any.

    ``tokenize`` is the encoder's (:meth:`MarkupEncoder.tokenize`): ids and mask on the CPU.
    """

    def __init__(self, tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]):
        self.tokenize = tokenize

    def __call__(self, batch: Sequence[tuple[int, str, torch.Tensor]]) -> Batch:
        markups = [m for _, m, _ in batch]
        input_ids, mask = self.tokenize(markups)
        return Batch([i for i, _, _ in batch], markups, torch.stack([x for _, _, x in batch]),
                     input_ids, mask)  # fmt: skip


def seed_worker(worker_id: int) -> None:
    """Give each data-loader worker its own numpy and random seed (torch seeds itself per worker)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers (seed, process, step, ...), well mixed and stable."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


class EpochSampler(torch.utils.data.Sampler[int]):
    """This process's share of a seeded permutation of the data for one epoch.

    The permutation depends on (data seed, epoch) only; it is padded by wrapping round so that
    every process gets ceil(N / world) indices, and process r takes every world-th index from r.
    ``skip`` drops the first indices of this process's share (resuming inside an epoch).
    """

    def __init__(self, size: int, seed: int, rank: int, world_size: int) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_process = math.ceil(size / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        padded = (order * math.ceil(self.per_process * self.world_size / self.size))[
            : self.per_process * self.world_size
        ]
        return padded[self.rank :: self.world_size][self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(0, self.per_process - self.skip)


# ---- checkpoint state ---------------------------------------------------------------------


class TrainerState:
    """Position of the run: optimizer steps done, epoch, batches of this epoch consumed, time."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.seconds = float(state["seconds"])


class StopFlag:
    """Set by SIGTERM / SIGUSR1 / SIGINT; the loop checks it between steps (installed in the main
    thread). A second SIGINT (Ctrl-C pressed again) raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, no preemption
            for sig in PREEMPT_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their state file) as (step, path), oldest first."""
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


class CheckpointDamaged(Exception):
    """A checkpoint directory whose record or state cannot be read."""


def read_checkpoint_record(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``markup2im_train.json``; CheckpointDamaged when it is unreadable."""
    try:
        record = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointDamaged(f"{checkpoint / STATE_FILE}: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CheckpointDamaged(f"{checkpoint / STATE_FILE}: not a checkpoint record")
    return record


def incompatibility(
    record: dict[str, Any], config: TrainConfig, dataset: dict[str, Any] | None
) -> str | None:
    """Why a checkpoint cannot be resumed with ``config`` on ``dataset`` (None: it can)."""
    # a setting added after the checkpoint was written had its default value then
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved, current = record.get("config", {}), config.fingerprint()
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if saved.get(k, defaults.get(k)) != current.get(k, defaults.get(k))
    )
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        return f"settings differ from the checkpointed run ({details})"
    before = record.get("dataset")
    if dataset is not None and before is not None and before.get("hash") != dataset["hash"]:
        return (
            f"the dataset differs from the checkpointed run's ({before.get('path')}, "
            f"{_rows(before.get('splits'))} -> {dataset['path']}, {_rows(dataset['splits'])})"
        )
    return None


def _rows(splits: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (splits or {}).items()) or "no splits recorded"


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


def is_sane_checkpoint(checkpoint: Path) -> bool:
    """What the checkpoint's record says (False when it is unreadable or says nothing)."""
    try:
        return read_checkpoint_record(checkpoint).get("sane") is True
    except CheckpointDamaged:
        return False


def _weights_loss(
    accelerator: Any, denoiser: Any, eps_model: Any, inputs: Any, weights: Any
) -> float:
    """The loss of the last batch with the weights as they are now, averaged over processes.

    Taken when a checkpoint is written, so that its weights are judged at once (the next step's
    loss would come one step too late for pruning). Eval mode and no gradient: it draws no
    random numbers and changes nothing.
    """
    denoiser.eval()
    try:
        with torch.no_grad():
            value = step_loss(eps_model, inputs, weights).detach().float().reshape(1)
    finally:
        denoiser.train()
    return float(accelerator.reduce(value, reduction="mean")[0])


def _read_log(log_path: Path, up_to_step: int | None) -> list[list[str]]:
    """The CSV log's rows up to a resumed step (none when starting afresh)."""
    rows: list[list[str]] = []
    if up_to_step is not None and log_path.is_file():
        with log_path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                if len(row) == len(LOG_COLUMNS) and row[0].isdigit():
                    if int(row[0]) <= up_to_step:
                        rows.append(row)
    return rows


def _rewrite_log(log_path: Path, rows: list[list[str]]) -> None:
    """Start the CSV log afresh with ``rows`` (those of a resumed run up to its step)."""
    with atomic_path(log_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_COLUMNS)
        writer.writerows(rows)


def _loss_history(rows: list[list[str]]) -> LossHistory:
    losses = {}
    for row in rows:
        with contextlib.suppress(ValueError):
            losses[int(row[0])] = float(row[LOG_COLUMNS.index("loss")])
    return LossHistory(losses)


def _all_finite(parameters: Iterator[torch.nn.Parameter] | Sequence[torch.nn.Parameter]) -> bool:
    """Whether every weight is finite, read back from the device once (not once per tensor)."""
    checks = [torch.isfinite(p).all() for p in parameters]
    return bool(torch.stack(checks).all()) if checks else True


def _unwrap_sample(output: Any) -> torch.Tensor:
    """The noise prediction of a denoiser call (a tensor, or an output object with ``sample``)."""
    return output.sample if hasattr(output, "sample") else output


# ---- the step's pieces --------------------------------------------------------------------


def encode_tokens(
    encoder: Any, input_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``MarkupEncoder.forward`` computes after tokenising: hidden states zeroed at padding
    and the mask, on the encoder's device (the tokens come from the data-loader workers)."""
    device = encoder.device
    input_ids = input_ids.to(device, non_blocking=True)
    mask = mask.to(device, non_blocking=True)
    with torch.set_grad_enabled(encoder.trainable and torch.is_grad_enabled()):
        hidden = encoder.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype), mask


class EncoderCache:
    """Each example's frozen-encoder output, computed the first time the example is seen.

    The frozen encoder gives an example the same states every epoch, so later epochs skip it.
    Each example is kept at its own length (L_i x D on the device: about 55k x 100 x 768 x 4
    bytes = 17 GB for im2latex in fp32, so this suits small datasets) and a batch is padded with
    zeros, as the encoder pads. Examples are encoded in other batch company than without the
    cache, so the states equal the uncached ones to float rounding, not bit for bit.
    """

    def __init__(self, encode: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]):
        self.encode = encode
        self.states: dict[int, torch.Tensor] = {}
        self.encoded = 0  # examples run through the encoder so far

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = batch.mask.sum(1).tolist()  # the mask from the loader is on the CPU: no sync
        missing = [row for row, index in enumerate(batch.indices) if index not in self.states]
        if missing:
            width = max(lengths[row] for row in missing)
            rows = torch.tensor(missing)
            with torch.no_grad():
                hidden, _ = self.encode(batch.input_ids[rows, :width], batch.mask[rows, :width])
            for k, row in enumerate(missing):
                self.states[batch.indices[row]] = hidden[k, : lengths[row]].clone()
            self.encoded += len(missing)
        states = [self.states[index] for index in batch.indices]
        hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        mask = batch.mask[:, : hidden.shape[1]].to(hidden.device, non_blocking=True)
        return hidden, mask


def markup_buckets(limit: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """The lengths markup states are padded to under ``compile``: powers of two from
    ``smallest``, then ``limit`` (the longest encoding: max markup length + end token); a power
    of two within 25% of the limit gives way to it. A compiled denoiser then meets only these
    few shapes (paper, limit 1025: 32, 64, 128, 256, 512, 1025)."""
    sizes = []
    size = smallest
    while size < limit:
        if size * 1.25 < limit:
            sizes.append(size)
        size *= 2
    return (*sizes, limit)


def bucket_length(length: int, limit: int) -> int:
    """The padded length of ``length`` markup states (the smallest bucket that holds them)."""
    if length > limit:
        raise ValueError(f"markup of {length} states is longer than the limit {limit}")
    return next(size for size in markup_buckets(limit) if size >= length)


def pad_markup(
    hidden: torch.Tensor, mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, L, D) states with zeros and the (B, L) mask with False to ``length``.

    The padded positions are masked out of the cross-attention, so the denoiser's output
    changes only by float rounding.
    """
    extra = length - hidden.shape[1]
    if extra <= 0:
        return hidden, mask
    return (
        torch.nn.functional.pad(hidden, (0, 0, 0, extra)),
        torch.nn.functional.pad(mask, (0, extra), value=False),
    )


def draw_step(
    eps_model: Any,
    schedule: NoiseSchedule,
    config: ScheduledSamplingConfig,
    x0: torch.Tensor,
    progress: float,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
) -> StepInputs:
    """:func:`markup2im.scheduled_sampling.prepare_step`, with the noise drawn on the device.

    t and m come from ``generator`` on the CPU (m is needed on the host, and drawing them there
    needs no sync); the noise too when ``noise_generator`` is None, exactly as ``prepare_step``
    draws it (the CPU path), else from ``noise_generator`` on its device (a CUDA generator
    seeded like ``generator``: nothing is copied from the host).
    """
    batch, device = x0.shape[0], x0.device
    T = schedule.num_train_timesteps
    timesteps, m = draw_timesteps_and_m(config, progress, batch, T, generator)
    t_max = int(timesteps.max())  # on the CPU copy: no host sync
    if device.type == "cuda":
        timesteps = timesteps.pin_memory().to(device, non_blocking=True)
    else:
        timesteps = timesteps.to(device)

    def randn() -> torch.Tensor:
        if noise_generator is None:
            return torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(
                device, x0.dtype
            )
        return torch.randn(
            x0.shape, generator=noise_generator, dtype=torch.float32, device=device
        ).to(x0.dtype)

    noise = randn()
    fresh = [randn() for _ in range(m)]
    return build_inputs(eps_model, schedule, x0, timesteps, m, noise, fresh, t_max)


def adamw_options(params: Sequence[torch.nn.Parameter]) -> dict[str, Any]:
    """``fused=True`` (one kernel for all parameters) when every parameter is on a GPU; nothing
    otherwise, which keeps the CPU optimizer as it was."""
    return {"fused": True} if params and all(p.is_cuda for p in params) else {}


def noise_generator(seed: int, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` for the step noise on CUDA; None on the CPU (the noise then
    comes from the step's CPU generator, which keeps CPU runs as they always were)."""
    if device.type != "cuda":
        return None
    return torch.Generator(device=device).manual_seed(seed)


def lr_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, processes: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then cosine to 0 at ``total_steps``.

    ``processes`` N > 1 reproduces the original on N processes: its scheduler, prepared by
    accelerate, advanced N times per optimizer step over a schedule of N x total steps, so
    warm-up ended after warmup_steps / N optimizer steps (music on 4 GPUs: 125, not 500) and
    the cosine still reached 0 at the end.
    """
    from diffusers.optimization import get_cosine_schedule_with_warmup

    if processes == 1:
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    total = total_steps * processes

    def factor(step: int) -> float:  # diffusers' cosine-with-warm-up factor at step x N
        count = step * processes
        if count < warmup_steps:
            return float(count) / float(max(1, warmup_steps))
        progress = float(count - warmup_steps) / float(max(1, total - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EMAOnDevice:
    """Checkpoint slot of an EMAModel that loads its shadow weights onto ``device``.

    accelerate loads registered objects from CPU tensors; an EMA left on the CPU next to CUDA
    weights fails at its first step (mixed devices). The saved state is the EMA's own.
    """

    def __init__(self, ema: Any, device: torch.device | str) -> None:
        self.ema, self.device = ema, torch.device(device)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)
        self.ema.to(self.device)


DDP_PREFIX = "module."


def unwrapped_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict without the DDP ``module.`` prefix (checkpoints written before they were
    saved unwrapped carry it when several processes wrote them)."""
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        return {key[len(DDP_PREFIX) :]: value for key, value in state.items()}
    return dict(state)


def _save_unwrapped(accelerator: Any) -> Callable[..., None]:
    """A save_state pre-hook: write each prepared model's unwrapped weights (no ``module.``),
    so that a checkpoint does not depend on the number of processes."""

    def hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        for i, model in enumerate(models):
            weights[i] = accelerator.get_state_dict(model, unwrap=True)

    return hook


def _load_unwrapped(accelerator: Any) -> Callable[..., None]:
    """A load_state pre-hook: load the weights into the unwrapped models (either key form) and
    take them off accelerate's list, which would load them into the wrapper strictly."""

    def hook(models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            ending = "" if i == 0 else f"_{i}"
            path = Path(input_dir) / f"model{ending}.safetensors"
            if path.is_file():
                state = load_file(str(path))
            else:
                path = Path(input_dir) / f"pytorch_model{ending}.bin"
                state = torch.load(path, map_location="cpu", weights_only=True)
            accelerator.unwrap_model(model).load_state_dict(unwrapped_state(state))
        models.clear()

    return hook


def check_process_group(num_processes: int, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a process started as one of N > 1 (WORLD_SIZE) that accelerate runs alone.

    That happens with ``accelerate launch --multi_gpu`` where CUDA is not available: each process
    would train a model of its own and they would overwrite each other's files.
    """
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world <= 1 or num_processes > 1:
        return
    why = (
        "CUDA is not available in this process"
        if not torch.cuda.is_available()
        else "accelerate formed no process group"
    )
    raise ConfigError(
        f"this process was started as process {environ.get('RANK', '?')} of {world} "
        f"(WORLD_SIZE={world}), but accelerate runs it as a single process ({why}): each of the "
        f"{world} processes would train alone and overwrite the others' checkpoints. On a GPU "
        "node check that the GPUs are visible (nvidia-smi, CUDA_VISIBLE_DEVICES); to train "
        f"{world} processes on the CPU, set ACCELERATE_USE_CPU=1 for `accelerate launch "
        "--multi_gpu`"
    )


# ---- time limits --------------------------------------------------------------------------

# the clock of the deadline check, read at the start and once per step (or per read-back with
# several processes); tests replace it
_now = time.time


def parse_slurm_time(text: str) -> float | None:
    """Unix time of a Slurm time stamp (``2026-12-01T23:10:00``, local time); None for
    ``N/A``, ``Unknown``, ``NONE`` and other non-times (no limit)."""
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def slurm_job_end(
    environ: Mapping[str, str] | None = None, run: Callable[..., Any] = subprocess.run
) -> float | None:
    """Unix time at which this Slurm job's time limit ends; None outside a Slurm job (no
    ``SLURM_JOB_ID``) or when it has no limit or none can be found.

    ``SLURM_JOB_END_TIME`` (Slurm >= 23.02) when set, else ``squeue -h -j JOB -o %e``.
    """
    environ = os.environ if environ is None else environ
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    end = environ.get("SLURM_JOB_END_TIME")
    if end:
        with contextlib.suppress(ValueError):
            return float(int(end))
        logger.warning("SLURM_JOB_END_TIME=%r is not a unix time; asking squeue", end)
    command = ["squeue", "-h", "-j", job, "-o", "%e"]
    try:
        done = run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("cannot ask Slurm for the end of job %s (%s): no walltime margin", job, exc)
        return None
    lines = (done.stdout or "").split()
    if done.returncode != 0 or not lines:
        logger.warning(
            "%s failed (status %s: %s): no walltime margin",
            shlex.join(command),
            done.returncode,
            (done.stderr or "").strip() or "no output",
        )
        return None
    found = parse_slurm_time(lines[0])
    if found is None:
        logger.info("Slurm job %s has no time limit (%s)", job, lines[0])
    return found


def walltime_deadline(
    margin: float,
    environ: Mapping[str, str] | None = None,
    run: Callable[..., Any] = subprocess.run,
) -> tuple[float, float] | None:
    """(deadline, time limit) for stopping ``margin`` seconds before this Slurm job's time
    limit; None when there is no job or limit (:func:`slurm_job_end`)."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"train: the walltime margin must be >= 0 seconds, got {margin}")
    end = slurm_job_end(environ, run)
    return None if end is None else (end - margin, end)


def _clock(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _deadline_reason(config: TrainConfig, now: float) -> str:
    """What TrainingInterrupted says when the deadline stopped the run."""
    if config.time_limit is not None:
        return (
            f"stopping {config.time_limit - now:.0f} s before the Slurm time limit "
            f"({_clock(config.time_limit)})"
        )
    return f"reached the deadline {_clock(float(config.deadline or now))}"


class _Pending(NamedTuple):
    """A finished step whose loss is still on the device."""

    step: int
    epoch: int
    loss: torch.Tensor
    lr: float
    ss_prob: float
    m: int
    seconds: float


# ---- the loop -----------------------------------------------------------------------------


def train(config: TrainConfig) -> TrainResult:
    """Train a Markup2ImModel on ``config.dataset_dir`` and save it to ``output_dir/model``.

    Raises TrainingInterrupted after saving a checkpoint when SIGTERM/SIGUSR1/SIGINT arrives,
    and TrainingDivergedError (naming the last sane checkpoint, or saying that none is) when the
    loss becomes non-finite.
    """
    try:
        return _train(config)
    except _RestartFromScratch:
        # the failed loads may have changed the model or optimizer: build everything again
        return _train(config)


def _train(config: TrainConfig) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from markup2im.cuda import configure_cuda
    from markup2im.pipeline import Markup2ImModel

    config.validate()
    # accelerate logs every file of a checkpoint at INFO; one line of ours says the same
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
    ss_config = config.scheduled_sampling()
    output_dir, dataset_dir = Path(config.output_dir), Path(config.dataset_dir)
    checkpoint_dir, log_path = output_dir / "checkpoints", output_dir / "train_log.csv"

    # CPU processes (gloo) only when asked for with ACCELERATE_USE_CPU=1: a GPU job whose CUDA
    # is missing must fail at once, not train on the CPU or as N separate runs
    accelerator = Accelerator(mixed_precision=config.mixed_precision, project_dir=str(output_dir))
    check_process_group(accelerator.num_processes)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    device = accelerator.device
    if device.type == "cuda":
        configure_cuda()
    set_seed(config.seed)

    info = read_dataset_info(dataset_dir)
    dataset = MarkupImageDataset(
        load_split(dataset_dir, "train"), info, f"{dataset_dir} train", config.limit_train
    )
    if len(dataset) == 0:
        raise DataError(f"{dataset_dir}: the train split is empty")
    dataset_record = {**dataset_fingerprint(dataset_dir), "path": str(dataset_dir)}
    encoder = config.encoder or _default_encoder(info)
    model = Markup2ImModel.from_config(
        model_preset=config.model_preset,
        encoder=encoder,
        height=info.height,
        width=info.width,
        channels=info.channels,
        max_markup_length=config.max_markup_length,
        prediction_type=config.prediction_type,
    )
    model.domain = info.domain  # recorded with the model (the demo shows its examples)
    model.encoder.set_trainable(config.train_encoder)
    model.to(device)
    if config.channels_last:
        model.denoiser.to(memory_format=torch.channels_last)
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    params = list(model.trainable_parameters())
    optimizer = torch.optim.AdamW(
        params,
        lr=float(config.learning_rate),
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        **adamw_options(params),
    )

    sampler = EpochSampler(len(dataset), config.data_seed, rank, world_size)
    batches_per_epoch = math.ceil(sampler.per_process / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    lr_scheduler = lr_schedule(
        optimizer,
        config.warmup_steps,
        total_steps,
        world_size if config.warmup_per_process else 1,
    )
    denoiser, optimizer = accelerator.prepare(model.denoiser, optimizer)
    accelerator.register_save_state_pre_hook(_save_unwrapped(accelerator))
    accelerator.register_load_state_pre_hook(_load_unwrapped(accelerator))

    state = TrainerState()
    accelerator.register_for_checkpointing(lr_scheduler, state)
    ema = None
    if config.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)  # shadow copies on the params' device
        # a resumed EMA must land there too (accelerate loads it as CPU tensors)
        accelerator.register_for_checkpointing(EMAOnDevice(ema, device))
    if config.train_encoder:  # outside the prepared denoiser: its weights need a checkpoint slot
        accelerator.register_for_checkpointing(model.encoder.model)

    resumed_from = _start_or_resume(accelerator, config, output_dir, dataset_record)
    kept_rows = _read_log(log_path, state.global_step if resumed_from else None)
    history = _loss_history(kept_rows)
    accelerator.wait_for_everyone()  # every process has read the log before it is rewritten
    if main:
        _rewrite_log(log_path, kept_rows)
    accelerator.wait_for_everyone()
    logger.info(
        "process %d of %d (%s, %d torch threads): %s training, %d examples, %d steps per epoch, "
        "%d steps in all%s",
        rank,
        world_size,
        device,
        torch.get_num_threads(),
        config.method,
        len(dataset),
        steps_per_epoch,
        total_steps,
        f", resuming at step {state.global_step} from {resumed_from}" if resumed_from else "",
    )
    if config.deadline is not None:
        logger.info(
            "will checkpoint and stop at the first step after %s%s",
            _clock(config.deadline),
            ""
            if config.time_limit is None
            else f", {config.time_limit - config.deadline:.0f} s before the time limit "
            f"{_clock(config.time_limit)}",
        )
        if _now() >= config.deadline:
            logger.warning(
                "the deadline has passed already: training one step (with several processes, "
                "up to the first read-back) and a checkpoint"
            )

    # the compiled denoiser trains; the checkpoint check runs the plain one (eval mode and no
    # gradient would each make torch.compile build another graph)
    plain_denoiser = denoiser
    limit = model.max_markup_length + 1  # markup tokens + the end token
    if config.compile:
        denoiser = torch.compile(denoiser)

    cache = (
        EncoderCache(lambda ids, mask: encode_tokens(model.encoder, ids, mask))
        if config.cache_encoder
        else None
    )

    def encode(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's markup states, under the training's autocast (bf16: faster, as the
        denoiser sees them), padded to a bucket length when compiled."""
        with accelerator.autocast():
            if cache is not None:
                hidden, mask = cache(batch)
            else:
                hidden, mask = encode_tokens(model.encoder, batch.input_ids, batch.mask)
        if config.compile:
            hidden, mask = pad_markup(hidden, mask, bucket_length(hidden.shape[1], limit))
        return hidden, mask

    def diverged(what: str) -> TrainingDivergedError:
        """The error for a divergence; sets aside the checkpoints after the last sane one."""
        checkpoints = list_checkpoints(checkpoint_dir)
        sane = [(s, path) for s, path in checkpoints if is_sane_checkpoint(path)]
        last = sane[-1] if sane else None
        later = [path for s, path in checkpoints if last is None or s > last[0]]
        moved = [path.with_name(DIVERGED_PREFIX + path.name) for path in later]
        if main:
            for path, target in zip(later, moved, strict=True):
                if target.exists():
                    shutil.rmtree(target)
                os.replace(path, target)
        names = ", ".join(t.name for t in moved)
        if last is not None:
            record = read_checkpoint_record(last[1])
            found = (
                f"The last sane checkpoint is {last[1]} (the loss with its weights "
                f"{record['check_loss']:.4g}, the running loss {record['running_loss']:.4g})"
            )
            if moved:
                found += f"; the {len(moved)} later one(s) were set aside as {names}"
        elif moved:
            found = (
                "No checkpoint of this run is sane: the loss with the weights of each was "
                f"non-finite or more than {SANE_LOSS_FACTOR:g} times the running loss; they "
                f"were set aside as {names}"
            )
        else:
            found = "No checkpoint of this run is sane: none was saved before the divergence"
        suggested = config.learning_rate / 10
        return TrainingDivergedError(
            f"{what}. {found}. To retry with a lower learning rate, run the same command with "
            f"--learning-rate {suggested:g} --resume auto: this run's checkpoints are then moved "
            f"to {output_dir / STALE_PREFIX}<date>-<time> and training starts from scratch (in "
            "the workflow: lower this dataset's train.learning_rate in the config file and run "
            "snakemake again, which does the same)",
            learning_rate=config.learning_rate,
            suggested_learning_rate=suggested,
        )

    def save_checkpoint(check_loss: float) -> Path:
        """Write the resume point; ``check_loss`` (the loss with these weights) says if sane."""
        if not _all_finite(params):
            raise diverged(
                f"weights became non-finite by step {state.global_step}; not checkpointing"
            )
        final = checkpoint_dir / f"checkpoint-{state.global_step}"
        tmp = checkpoint_dir / f".tmp-checkpoint-{state.global_step}"
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # every process: its RNG file; the main one the rest
        accelerator.wait_for_everyone()
        if main:
            write_json(
                tmp / STATE_FILE,
                {
                    "config": config.fingerprint(),
                    "dataset": dataset_record,
                    "world_size": world_size,
                    "loss": last_loss,
                    "check_loss": check_loss,
                    "running_loss": history.running(state.global_step),
                    "sane": history.is_sane(check_loss, state.global_step),
                    **state.state_dict(),
                },
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _prune_checkpoints(checkpoint_dir, config.checkpoints_total_limit)
            logger.info("saved checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def save_snapshot() -> None:
        """The model as it would be saved if training ended now (EMA weights when kept)."""
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        if main:
            model.save_pretrained(output_dir / "snapshots" / f"step-{state.global_step}")
        if ema is not None:
            ema.restore(params)
        accelerator.wait_for_everyone()

    log_file = log_path.open("a", newline="", encoding="utf-8") if main else None
    log_writer = csv.writer(log_file) if log_file else None
    tensorboard = _tensorboard_writer(output_dir) if main else None
    progress = tqdm(
        total=total_steps, initial=state.global_step, desc="train", disable=not main, unit="step"
    )
    pending: list[_Pending] = []  # steps whose loss has not been read back yet

    def flush(stop_signal: bool, deadline_passed: bool) -> tuple[bool, bool]:
        """Read back the pending losses with the stop flags, summed over the processes (the
        step's one wait for the device), log them and check them. Returns the stop flags as
        all processes agree on them."""
        nonlocal last_loss
        started = time.perf_counter()
        flags = torch.tensor([float(stop_signal), float(deadline_passed)])
        stats = torch.cat([torch.stack([p.loss for p in pending]), flags.to(device)])
        values = accelerator.reduce(stats, reduction="sum").tolist()
        state.seconds += time.perf_counter() - started  # the wait belongs to the last step
        pending[-1] = pending[-1]._replace(seconds=state.seconds)
        for p, value in zip(pending, values[:-2], strict=True):
            loss = value / world_size
            history.add(p.step, loss)
            if not math.isfinite(loss):
                pending.clear()
                raise diverged(f"loss became {loss} at step {p.step} (lr {p.lr:.3g})")
            last_loss = loss
            if log_writer is not None:
                log_writer.writerow(
                    [
                        p.step,
                        p.epoch,
                        f"{loss:.8g}",
                        f"{p.lr:.8g}",
                        f"{p.ss_prob:.6g}",
                        p.m,
                        f"{p.seconds:.3f}",
                    ]
                )
            if tensorboard is not None:
                for key, scalar in (("loss", loss), ("lr", p.lr), ("ss_prob", p.ss_prob)):
                    tensorboard.add_scalar(f"train/{key}", scalar, p.step)
        if log_file is not None:
            log_file.flush()
        progress.set_postfix(loss=f"{last_loss:.4f}", m=pending[-1].m, refresh=False)
        pending.clear()
        return values[-2] > 0, values[-1] > 0

    def deadline_passed() -> bool:
        return config.deadline is not None and _now() >= config.deadline

    last_loss = float("nan")
    denoiser.train()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=Collate(model.encoder.tokenize),  # tokenised in the workers
        num_workers=config.num_workers,
        worker_init_fn=seed_worker,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,  # one set of workers for all epochs
    )
    try:
        with StopFlag() as stop:
            while state.global_step < total_steps:
                # the sampler runs in this process: set before each pass, workers or not
                sampler.set_epoch(state.epoch, state.batches_in_epoch * config.batch_size)
                batches = iter(loader)
                while (
                    state.batches_in_epoch < batches_per_epoch and state.global_step < total_steps
                ):
                    started = time.perf_counter()
                    group = min(
                        config.gradient_accumulation_steps,
                        batches_per_epoch - state.batches_in_epoch,
                    )
                    step_seed = derive_seed(config.seed, rank, state.global_step)
                    generator = torch.Generator().manual_seed(step_seed)
                    device_generator = noise_generator(step_seed, device)
                    fraction = state.global_step / total_steps
                    lr = float(lr_scheduler.get_last_lr()[0])
                    loss_sum = torch.zeros((), device=device)
                    m_used = 0
                    for micro in range(group):
                        batch = next(batches)
                        images = batch.images.to(device, non_blocking=True)
                        if config.channels_last:
                            images = images.contiguous(memory_format=torch.channels_last)
                        hidden, mask = encode(batch)

                        def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                            return _unwrap_sample(denoiser(x, t, hidden, mask))  # noqa: B023

                        sync = micro == group - 1
                        with contextlib.nullcontext() if sync else accelerator.no_sync(denoiser):
                            inputs = draw_step(
                                eps_model, schedule, ss_config, images, fraction, generator,
                                device_generator,
                            )  # fmt: skip
                            weights = (
                                None
                                if config.snr_gamma is None
                                else schedule.min_snr_weight(inputs.timesteps, config.snr_gamma)
                            )
                            loss = step_loss(eps_model, inputs, weights)
                            accelerator.backward(loss / group)
                        loss_sum += loss.detach().float()
                        m_used = max(m_used, inputs.m)
                    if config.train_encoder and world_size > 1:
                        # the encoder runs outside the DDP wrapper: average its gradients here
                        for p in model.encoder.parameters():
                            if p.grad is not None:
                                p.grad = accelerator.reduce(p.grad, reduction="mean")
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.step(params)
                    state.global_step += 1
                    state.batches_in_epoch += group
                    state.seconds += time.perf_counter() - started
                    step = state.global_step
                    pending.append(
                        _Pending(
                            step, state.epoch, loss_sum / group, lr,
                            ss_config.probability(fraction), m_used, state.seconds,
                        )
                    )  # fmt: skip
                    progress.update(1)
                    checkpoint_due = step % config.checkpoint_every == 0
                    snapshot_due = bool(config.snapshot_every) and step % config.snapshot_every == 0
                    read_back = (
                        checkpoint_due
                        or snapshot_due
                        or step % config.log_every == 0
                        or step >= total_steps
                    )
                    if world_size == 1:  # one process decides at every step
                        signalled, late = stop.signal is not None, deadline_passed()
                        read_back = read_back or signalled or late
                    if not read_back:
                        continue
                    if world_size > 1:  # several decide together, at the read-backs
                        signalled, late = stop.signal is not None, deadline_passed()
                    signalled, late = flush(signalled, late)
                    stopping = signalled or late
                    if checkpoint_due or stopping:

                        def check_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                            return _unwrap_sample(plain_denoiser(x, t, hidden, mask))  # noqa: B023

                        checkpoint = save_checkpoint(
                            _weights_loss(accelerator, plain_denoiser, check_model, inputs, weights)
                        )
                    if snapshot_due:
                        save_snapshot()
                    if stopping:
                        if signalled:
                            raise TrainingInterrupted(
                                step, checkpoint, stop.signal or signal.SIGTERM
                            )
                        reason = _deadline_reason(config, _now())
                        logger.warning("%s: saved %s", reason, checkpoint)
                        raise TrainingInterrupted(step, checkpoint, signal.SIGTERM, reason)
                if state.batches_in_epoch >= batches_per_epoch:
                    state.epoch += 1
                    state.batches_in_epoch = 0
    finally:
        progress.close()
        if log_file is not None:
            log_file.close()
        if tensorboard is not None:
            tensorboard.close()

    model_dir = output_dir / "model"
    if not _all_finite(params):
        raise TrainingDivergedError(f"weights are non-finite after step {state.global_step}")
    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(params)
    if main:
        model.save_pretrained(model_dir)
        logger.info("saved model to %s", model_dir)
    accelerator.wait_for_everyone()
    logger.info(
        "process %d of %d: finished %d steps, final loss %.5f",
        rank,
        world_size,
        state.global_step,
        last_loss,
    )
    accelerator.end_training()
    return TrainResult(model_dir, state.global_step, last_loss, world_size)


def _default_encoder(info: DatasetInfo) -> str:
    spec = DOMAINS.get(info.domain)
    if spec is None:
        raise ConfigError(
            f"dataset domain {info.domain!r} has no default encoder; pass --encoder NAME_OR_DIR"
        )
    return spec.hub_encoder


def _start_or_resume(
    accelerator: Any, config: TrainConfig, output_dir: Path, dataset: dict[str, Any]
) -> Path | None:
    """Resume (--resume latest / auto) or start afresh; the checkpoint resumed from, if any.

    Newest first, a checkpoint that cannot be read or loaded is skipped with a warning and
    renamed ``damaged-checkpoint-N``. A checkpoint of other settings or data stops ``latest``
    with a ConfigError; ``auto`` moves the checkpoints aside (:func:`set_aside_checkpoints`) and
    starts afresh. A checkpoint written by another number of processes counts as other settings
    for ``auto`` (the global batch differs); ``latest`` loads it (the weights are saved
    unwrapped) and warns. ``none`` refuses to start where checkpoints exist.
    """
    checkpoint_dir = output_dir / "checkpoints"
    main, world_size = accelerator.is_main_process, accelerator.num_processes
    checkpoints = list_checkpoints(checkpoint_dir)
    if main and checkpoint_dir.is_dir():
        for stale in checkpoint_dir.glob(".tmp-checkpoint-*"):  # left by a kill during a save
            shutil.rmtree(stale, ignore_errors=True)
    if config.resume == "none":
        if checkpoints:
            raise ConfigError(
                f"{checkpoint_dir} holds checkpoints of an earlier run; pass --resume latest to "
                "continue it, --resume auto to continue it or, when its settings or data "
                "differ, set it aside and start afresh, or use another --output-dir"
            )
        _set_aside_leftovers(accelerator, output_dir)
        return None
    damaged: list[Path] = []
    loaded: Path | None = None
    partly_loaded = False  # a failed load may have changed the model or optimizer already
    for _, path in reversed(checkpoints):
        try:
            record = read_checkpoint_record(path)
        except CheckpointDamaged as exc:
            logger.warning("checkpoint %s is damaged (%s); trying the one before it", path, exc)
            damaged.append(path)
            continue
        if record.get("dataset") is None:
            logger.warning("%s records no dataset fingerprint: the data is not checked", path)
        problem = incompatibility(record, config, dataset)
        written_by = record.get("world_size")
        if problem is None and config.resume == "auto" and written_by not in (None, world_size):
            # another process count is another global batch: a run of other settings
            problem = (
                f"it was trained by {written_by} processes and this run has {world_size} (global "
                f"batch {written_by * config.batch_size} -> {world_size * config.batch_size})"
            )
        if problem is not None:
            if config.resume == "auto":
                accelerator.wait_for_everyone()
                stale = set_aside_checkpoints(output_dir) if main else None
                accelerator.wait_for_everyone()
                if main:
                    logger.warning(
                        "%s: %s; moved the checkpoints to %s and training from scratch",
                        path,
                        problem,
                        stale,
                    )
                if partly_loaded:
                    raise _RestartFromScratch
                return None
            raise ConfigError(
                f"{path}: cannot resume, {problem}. Run with --resume auto to move these "
                "checkpoints aside and train from scratch, use the same settings and data, or "
                "use another --output-dir"
            )
        if written_by is not None and written_by != world_size:
            logger.warning(
                "%s was written by %s processes, resuming with %s: the global batch and the "
                "data order per process change",
                path,
                written_by,
                world_size,
            )
        try:
            accelerator.load_state(str(path))
            ok = True
        except Exception as exc:  # torch, safetensors and pickle raise many types for bad files
            logger.warning("checkpoint %s is damaged (%s); trying the one before it", path, exc)
            ok = False
        if world_size > 1:  # every process must resume from the same checkpoint
            flag = torch.tensor(float(ok), device=accelerator.device)
            ok = float(accelerator.reduce(flag, reduction="sum")) == world_size
        if ok:
            loaded = path
            break
        partly_loaded = True  # also where this process loaded it and another could not
        damaged.append(path)
    accelerator.wait_for_everyone()
    if main:
        for path in damaged:
            target = path.with_name(DAMAGED_PREFIX + path.name)
            if target.exists():
                shutil.rmtree(target)
            os.replace(path, target)
            logger.warning("renamed the damaged checkpoint %s to %s", path, target.name)
    accelerator.wait_for_everyone()
    if loaded is not None:
        return loaded
    if damaged:
        if config.resume != "auto":
            raise ConfigError(
                f"{checkpoint_dir}: every checkpoint is damaged "
                f"({', '.join(DAMAGED_PREFIX + p.name for p in damaged)}); run with --resume "
                "auto to move them aside and train from scratch"
            )
        stale = set_aside_checkpoints(output_dir) if main else None
        accelerator.wait_for_everyone()
        if main:
            logger.warning("no loadable checkpoint: moved them to %s; training afresh", stale)
        if partly_loaded:
            raise _RestartFromScratch
        return None
    logger.info("no checkpoint in %s: starting from scratch", checkpoint_dir)
    _set_aside_leftovers(accelerator, output_dir)
    return None


def _set_aside_leftovers(accelerator: Any, output_dir: Path) -> None:
    """Before a fresh start, move aside what an earlier run left in O/checkpoints (diverged or
    damaged checkpoints), so that it never mixes with this run's."""
    checkpoint_dir = output_dir / "checkpoints"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
        stale = set_aside_checkpoints(output_dir)
        logger.warning("moved what an earlier run left in %s to %s", checkpoint_dir, stale)
    accelerator.wait_for_everyone()


def set_aside_checkpoints(output_dir: Path) -> Path:
    """Move ``O/checkpoints`` (with a copy of the log and any snapshots) to
    ``O/checkpoints.stale-<YYYYmmdd-HHMMSS>`` and return that directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output_dir / f"{STALE_PREFIX}{stamp}"
    number = 1
    while target.exists():
        target = output_dir / f"{STALE_PREFIX}{stamp}-{number}"
        number += 1
    os.replace(output_dir / "checkpoints", target)
    if (output_dir / "train_log.csv").is_file():
        shutil.copy2(output_dir / "train_log.csv", target / "train_log.csv")
    if (output_dir / "snapshots").is_dir():
        os.replace(output_dir / "snapshots", target / "snapshots")
    return target


def _prune_checkpoints(checkpoint_dir: Path, limit: int | None) -> None:
    """Remove all but the newest ``limit`` checkpoints; when none of those is sane, the newest
    sane one stays as well (the one to go back to if the run diverges)."""
    if limit is None:
        return
    checkpoints = list_checkpoints(checkpoint_dir)
    old, kept = checkpoints[: max(0, len(checkpoints) - limit)], checkpoints[-limit:]
    keep = None
    if not any(is_sane_checkpoint(path) for _, path in kept):
        keep = next((path for _, path in reversed(old) if is_sane_checkpoint(path)), None)
    for _, path in old:
        if path != keep:
            logger.info("removing old checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _tensorboard_writer(output_dir: Path) -> Any:
    """A TensorBoard SummaryWriter in output_dir/tensorboard when tensorboard is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))
