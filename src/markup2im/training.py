"""The training loop: baseline and scheduled-sampling DDPM training on HF accelerate.

One trainer serves both methods (baseline = scheduled-sampling weights 0, see
:mod:`markup2im.scheduled_sampling`). It runs as a plain process or under ``accelerate launch``
(one process per device, gradients averaged by DDP); the markup encoder is frozen and runs outside
the DDP wrapper, only the denoiser trains.

Defaults are the paper's: AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.01), 500
warm-up steps then cosine to 0, gradient-norm clip 1.0, batch 16 per process, 100 epochs, fp32, no
EMA, data-shuffle seed 42 and torch/numpy/random seed 1234. Unlike the original, the learning rate
is a float, only the main process writes files and every data-loader worker seeds numpy.

Output directory::

    O/checkpoints/checkpoint-<step>/   Accelerator.save_state + markup2im_train.json (resume point)
    O/train_log.csv                    step, epoch, loss, lr, ss_prob, m, seconds (one row per step)
    O/model/                           the final Markup2ImModel.save_pretrained layout
    O/snapshots/step-<N>/              the model every --snapshot-every steps (when asked)

Reproducible and preemption-safe: the data order is a seeded permutation per epoch, and all
randomness of a step (t, m, noise, rollout noise) comes from a generator seeded by (seed, process,
step). A checkpoint therefore only needs the model, optimizer, lr scheduler, EMA and the position
(epoch, batches consumed); on CPU a run killed with SIGTERM and resumed ends with the same weights,
bit for bit, as an uninterrupted one. SIGTERM or SIGUSR1 (what Slurm sends before preempting)
and SIGINT (Ctrl-C; a second one stops at once) make the trainer finish its step, save a
checkpoint and raise :class:`TrainingInterrupted`.

A checkpoint records the settings and a fingerprint of the dataset it was trained on. ``--resume
latest`` refuses a checkpoint of other settings or data; ``--resume auto`` (what the workflow
uses) then moves the checkpoints aside to ``O/checkpoints.stale-<date>-<time>/`` and starts from
scratch. A damaged checkpoint is skipped with a warning (renamed ``damaged-checkpoint-<step>``)
and the one before it is used.

A non-finite loss raises TrainingDivergedError. A checkpoint counts as sane when the loss of
the last batch with its weights is finite and at most SANE_LOSS_FACTOR times the running loss
(recorded in its state file); the newest sane checkpoint is kept even past the pruning limit
while no newer one is sane, and after a divergence the later ones are renamed
``diverged-checkpoint-<step>`` so that resuming starts from the sane one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from markup2im.atomic import atomic_path, write_json
from markup2im.data.datasets import DatasetInfo, dataset_fingerprint, load_split, read_dataset_info
from markup2im.diffusion import NoiseSchedule, check_prediction_type
from markup2im.errors import ConfigError, DataError, TrainingDivergedError
from markup2im.images import image_to_tensor, load_image
from markup2im.presets import DOMAINS
from markup2im.scheduled_sampling import ScheduledSamplingConfig, prepare_step, step_loss

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


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerun with --resume latest."""

    def __init__(self, step: int, checkpoint: Path, signum: int = signal.SIGTERM) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by a signal ({name}) at step {step}; checkpoint saved in {checkpoint}; "
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
    num_workers: int = 0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8

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
                "num_workers", "snapshot_every"}  # fmt: skip
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

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        name = f"{self.label} example {index} ({self.filenames[index]})"
        image = load_image(
            self.images[index]["image"],
            channels=self.info.channels,
            size=(self.info.width, self.info.height),
            name=name,
        )
        return self.markups[index], image_to_tensor(image)


def collate(batch: Sequence[tuple[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """Markups as a list, images stacked to (B, C, H, W)."""
    return [m for m, _ in batch], torch.stack([x for _, x in batch])


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
    return all(bool(torch.isfinite(p).all()) for p in parameters)


def _unwrap_sample(output: Any) -> torch.Tensor:
    """The noise prediction of a denoiser call (a tensor, or an output object with ``sample``)."""
    return output.sample if hasattr(output, "sample") else output


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
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    from markup2im.pipeline import Markup2ImModel

    config.validate()
    # accelerate logs every file of a checkpoint at INFO; one line of ours says the same
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
    ss_config = config.scheduled_sampling()
    output_dir, dataset_dir = Path(config.output_dir), Path(config.dataset_dir)
    checkpoint_dir, log_path = output_dir / "checkpoints", output_dir / "train_log.csv"

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        project_dir=str(output_dir),
        cpu=_cpu_processes(),
    )
    rank, world_size = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
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
    model.to(accelerator.device)
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    params = list(model.trainable_parameters())
    optimizer = torch.optim.AdamW(
        params,
        lr=float(config.learning_rate),
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )

    sampler = EpochSampler(len(dataset), config.data_seed, rank, world_size)
    batches_per_epoch = math.ceil(sampler.per_process / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    denoiser, optimizer = accelerator.prepare(model.denoiser, optimizer)

    state = TrainerState()
    accelerator.register_for_checkpointing(lr_scheduler, state)
    ema = None
    if config.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
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
        "process %d of %d: %s training, %d examples, %d steps per epoch, %d steps in all%s",
        rank,
        world_size,
        config.method,
        len(dataset),
        steps_per_epoch,
        total_steps,
        f", resuming at step {state.global_step} from {resumed_from}" if resumed_from else "",
    )

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
    last_loss = float("nan")
    denoiser.train()
    try:
        with StopFlag() as stop:
            while state.global_step < total_steps:
                sampler.set_epoch(state.epoch, state.batches_in_epoch * config.batch_size)
                loader = torch.utils.data.DataLoader(
                    dataset,
                    batch_size=config.batch_size,
                    sampler=sampler,
                    collate_fn=collate,
                    num_workers=config.num_workers,
                    worker_init_fn=seed_worker,
                    pin_memory=accelerator.device.type == "cuda",
                )
                batches = iter(loader)
                while (
                    state.batches_in_epoch < batches_per_epoch and state.global_step < total_steps
                ):
                    started = time.perf_counter()
                    group = min(
                        config.gradient_accumulation_steps,
                        batches_per_epoch - state.batches_in_epoch,
                    )
                    generator = torch.Generator().manual_seed(
                        derive_seed(config.seed, rank, state.global_step)
                    )
                    fraction = state.global_step / total_steps
                    lr = float(lr_scheduler.get_last_lr()[0])
                    loss_sum = torch.zeros((), device=accelerator.device)
                    m_used = 0
                    for micro in range(group):
                        markups, images = next(batches)
                        images = images.to(accelerator.device, non_blocking=True)
                        hidden, mask = model.encode(markups)

                        def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                            return _unwrap_sample(denoiser(x, t, hidden, mask))  # noqa: B023

                        sync = micro == group - 1
                        with contextlib.nullcontext() if sync else accelerator.no_sync(denoiser):
                            inputs = prepare_step(
                                eps_model, schedule, ss_config, images, fraction, generator
                            )
                            weights = (
                                None
                                if config.snr_gamma is None
                                else schedule.min_snr_weight(inputs.timesteps, config.snr_gamma)
                            )
                            loss = step_loss(eps_model, inputs, weights)
                            accelerator.backward(loss / group)
                        loss_sum += loss.detach().float()
                        m_used = max(m_used, inputs.m)
                    stats = torch.stack(
                        [
                            loss_sum / group,
                            torch.tensor(float(stop.signal is not None), device=loss_sum.device),
                        ]
                    )
                    stats = accelerator.reduce(stats, reduction="sum")
                    last_loss = float(stats[0]) / world_size
                    stopping = float(stats[1]) > 0
                    history.add(state.global_step + 1, last_loss)
                    if not math.isfinite(last_loss):
                        step = state.global_step + 1
                        raise diverged(f"loss became {last_loss} at step {step} (lr {lr:.3g})")
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
                    ss_prob = ss_config.probability(fraction)
                    if log_writer is not None:
                        log_writer.writerow(
                            [
                                state.global_step,
                                state.epoch,
                                f"{last_loss:.8g}",
                                f"{lr:.8g}",
                                f"{ss_prob:.6g}",
                                m_used,
                                f"{state.seconds:.3f}",
                            ]
                        )
                        log_file.flush()
                    if tensorboard is not None:
                        for key, value in (("loss", last_loss), ("lr", lr), ("ss_prob", ss_prob)):
                            tensorboard.add_scalar(f"train/{key}", value, state.global_step)
                    progress.update(1)
                    progress.set_postfix(loss=f"{last_loss:.4f}", m=m_used, refresh=False)
                    if state.global_step % config.checkpoint_every == 0 or stopping:
                        checkpoint = save_checkpoint(
                            _weights_loss(accelerator, denoiser, eps_model, inputs, weights)
                        )
                    if config.snapshot_every and state.global_step % config.snapshot_every == 0:
                        save_snapshot()
                    if stopping:
                        raise TrainingInterrupted(
                            state.global_step, checkpoint, stop.signal or signal.SIGTERM
                        )
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


def _cpu_processes() -> bool:
    """True for several processes without CUDA (launched by torchrun): they train with gloo.

    Accelerate only forms a CPU process group when told to run on CPU; ``accelerate launch
    --cpu`` itself starts one process, so on CPU use ``accelerate launch --multi_gpu
    --num_processes N`` (torchrun), which this makes work without a GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return world > 1 and not torch.cuda.is_available()


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
    starts afresh. ``none`` refuses to start where checkpoints exist.
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
        if record.get("world_size") != world_size:
            logger.warning(
                "%s was written by %s processes, resuming with %s: the data order per process "
                "changes",
                path,
                record.get("world_size"),
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
