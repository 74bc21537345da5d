"""Checkpoints of a training run: list, read, check, save, prune, set aside, resume.

``O/checkpoints/checkpoint-<step>/`` holds ``Accelerator.save_state`` and ``markup2im_train.json``
(the settings, the dataset fingerprint, the process count, the losses and the run's position).
Checkpoints hold the unwrapped denoiser's weights (no DDP ``module.`` prefix), so a run can resume
on another number of processes: ``--resume latest`` does, with a warning; ``--resume auto`` (the
workflow's) treats another process count like other settings, since the global batch differs.

``--resume latest`` refuses a checkpoint of other settings or data; ``--resume auto`` then moves
the checkpoints aside to ``O/checkpoints.stale-<date>-<time>/`` and starts from scratch. A damaged
checkpoint is skipped with a warning (renamed ``damaged-checkpoint-<step>``) and the one before it
is used. A checkpoint is sane when the loss of the last batch with its weights is finite and near
the running loss; the newest sane one is kept even past the pruning limit, and after a divergence
the later ones are renamed ``diverged-checkpoint-<step>``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from markup2im.atomic import write_json
from markup2im.errors import ConfigError, Markup2ImError
from markup2im.training.config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "markup2im_train.json"
STALE_PREFIX = "checkpoints.stale-"  # checkpoints of other settings or data, set aside
DAMAGED_PREFIX = "damaged-"  # a checkpoint that could not be loaded
DIVERGED_PREFIX = "diverged-"  # a checkpoint saved after the loss had left its sane range
DDP_PREFIX = "module."


class CheckpointDamaged(Exception):
    """A checkpoint directory whose record or state cannot be read."""


class CheckpointSaveError(Markup2ImError):
    """A checkpoint could not be written (a full disk, mostly); nothing half-written is left."""


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


def unwrapped_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict without the DDP ``module.`` prefix (checkpoints written before they were
    saved unwrapped carry it when several processes wrote them)."""
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        return {key[len(DDP_PREFIX) :]: value for key, value in state.items()}
    return dict(state)


class SaveUnwrapped:
    """A save_state pre-hook: write each prepared model's unwrapped weights (no ``module.``),
    so that a checkpoint does not depend on the number of processes."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def __call__(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        for i, model in enumerate(models):
            weights[i] = self.accelerator.get_state_dict(model, unwrap=True)


class LoadUnwrapped:
    """A load_state pre-hook: load the weights into the unwrapped models (either key form) and
    take them off accelerate's list, which would load them into the wrapper strictly."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def __call__(self, models: list[Any], input_dir: str) -> None:
        for i, model in enumerate(models):
            ending = "" if i == 0 else f"_{i}"
            path = Path(input_dir) / f"model{ending}.safetensors"
            if path.is_file():
                state = load_file(str(path))
            else:
                path = Path(input_dir) / f"pytorch_model{ending}.bin"
                state = torch.load(path, map_location="cpu", weights_only=True)
            self.accelerator.unwrap_model(model).load_state_dict(unwrapped_state(state))
        models.clear()


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their state file) as (step, path), oldest first."""
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def read_checkpoint_record(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``markup2im_train.json``; CheckpointDamaged when it is unreadable."""
    try:
        record = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointDamaged(f"{checkpoint / STATE_FILE}: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CheckpointDamaged(f"{checkpoint / STATE_FILE}: not a checkpoint record")
    return record


def is_sane_checkpoint(checkpoint: Path) -> bool:
    """What the checkpoint's record says (False when it is unreadable or says nothing)."""
    try:
        return read_checkpoint_record(checkpoint).get("sane") is True
    except CheckpointDamaged:
        return False


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


def _rename(path: Path, prefix: str) -> Path:
    """Rename a checkpoint to ``prefix + name``, replacing an earlier one of that name."""
    target = path.with_name(prefix + path.name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(path, target)
    return target


@dataclass
class Resumed:
    """How a run starts: from ``checkpoint``, or from scratch (None). ``restart``: a failed load
    may have changed the model or optimizer already, so they must be built again."""

    checkpoint: Path | None = None
    restart: bool = False


class Checkpoints:
    """The checkpoints of one run directory, for the processes of one accelerator.

    Every process calls every method (they wait for each other); only the main one writes.
    """

    def __init__(self, output_dir: Path, accelerator: Any, limit: int | None) -> None:
        self.output_dir = output_dir
        self.directory = output_dir / "checkpoints"
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.limit = limit

    def list(self) -> list[tuple[int, Path]]:
        return list_checkpoints(self.directory)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, step: int, record: dict[str, Any]) -> Path:
        """Write ``checkpoint-<step>`` (accelerate's state and ``record``) atomically, then
        prune; every process takes part (each writes its RNG state)."""
        final = self.directory / f"checkpoint-{step}"
        tmp = self.directory / f".tmp-checkpoint-{step}"
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(tmp))  # every process: its RNG file; main the rest
        except OSError as exc:
            raise self._save_failed(step, tmp, exc) from exc
        self.accelerator.wait_for_everyone()
        if self.main:
            try:
                write_json(tmp / STATE_FILE, record)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except OSError as exc:
                raise self._save_failed(step, tmp, exc) from exc
            self.prune()
            logger.info("saved checkpoint %s", final)
        self.accelerator.wait_for_everyone()
        return final

    def _save_failed(self, step: int, tmp: Path, exc: OSError) -> CheckpointSaveError:
        """Remove the half-written ``tmp`` and say what failed and what to do. (Another process
        of a multi-process run stops when the launcher sees this one exit.)"""
        shutil.rmtree(tmp, ignore_errors=True)
        full = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}
        why = full.get(exc.errno or 0, "it could not be written")
        todo = (
            "free space on that disk (or lower --checkpoints-total-limit, or give an "
            "--output-dir on a disk with room)"
            if exc.errno in full
            else "fix that"
        )
        kept = self.list()
        newest = (
            f"the newest complete one, {kept[-1][1].name}, is kept" if kept else "none came before"
        )
        return CheckpointSaveError(
            f"cannot save checkpoint-{step} in {self.directory}: {why} ({exc}); no half-written "
            f"checkpoint is left ({newest}). To go on, {todo}, then rerun with --resume latest "
            "(the workflow's --resume auto does so) to continue from the newest checkpoint"
        )

    def prune(self) -> None:
        """Remove all but the newest ``limit`` checkpoints; when none of those is sane, the
        newest sane one stays as well (the one to go back to if the run diverges)."""
        if self.limit is None:
            return
        checkpoints = self.list()
        old, kept = checkpoints[: max(0, len(checkpoints) - self.limit)], checkpoints[-self.limit :]
        keep = None
        if not any(is_sane_checkpoint(path) for _, path in kept):
            keep = next((path for _, path in reversed(old) if is_sane_checkpoint(path)), None)
        for _, path in old:
            if path != keep:
                logger.info("removing old checkpoint %s", path)
                shutil.rmtree(path, ignore_errors=True)

    def set_aside_after_divergence(self) -> tuple[Path | None, list[Path]]:
        """Rename the checkpoints after the last sane one ``diverged-...``; returns that sane
        checkpoint (None when there is none) and the new names of the others."""
        checkpoints = self.list()
        sane = [(s, path) for s, path in checkpoints if is_sane_checkpoint(path)]
        last = sane[-1] if sane else None
        later = [path for s, path in checkpoints if last is None or s > last[0]]
        if self.main:
            moved = [_rename(path, DIVERGED_PREFIX) for path in later]
        else:
            moved = [path.with_name(DIVERGED_PREFIX + path.name) for path in later]
        return (last[1] if last else None), moved

    def _set_aside_all(self, why: str) -> None:
        """Move every checkpoint aside because of ``why`` (all processes wait; the main one
        moves them and says where)."""
        self.accelerator.wait_for_everyone()
        if self.main:
            stale = set_aside_checkpoints(self.output_dir)
            logger.warning("%s; moved the checkpoints to %s and training from scratch", why, stale)
        self.accelerator.wait_for_everyone()

    def _set_aside_leftovers(self) -> None:
        """Before a fresh start, move aside what an earlier run left in O/checkpoints (diverged
        or damaged checkpoints), so that it never mixes with this run's."""
        self.accelerator.wait_for_everyone()
        if self.main and self.directory.is_dir() and any(self.directory.iterdir()):
            stale = set_aside_checkpoints(self.output_dir)
            logger.warning("moved what an earlier run left in %s to %s", self.directory, stale)
        self.accelerator.wait_for_everyone()

    # -- resuming -------------------------------------------------------------------------------
    def resume(self, config: TrainConfig, dataset: dict[str, Any]) -> Resumed:
        """Resume (``config.resume`` latest / auto) or start afresh (none).

        Newest first, a checkpoint that cannot be read or loaded is skipped with a warning and
        renamed ``damaged-checkpoint-N``. A checkpoint of other settings or data stops
        ``latest`` with a ConfigError; ``auto`` moves the checkpoints aside and starts afresh.
        ``none`` refuses to start where checkpoints exist.
        """
        checkpoints = self.list()
        if self.main and self.directory.is_dir():
            for stale in self.directory.glob(".tmp-checkpoint-*"):  # left by a kill during a save
                shutil.rmtree(stale, ignore_errors=True)
        if config.resume == "none":
            if checkpoints:
                raise ConfigError(
                    f"{self.directory} holds checkpoints of an earlier run; pass --resume latest "
                    "to continue it, --resume auto to continue it or, when its settings or data "
                    "differ, set it aside and start afresh, or use another --output-dir"
                )
            self._set_aside_leftovers()
            return Resumed()
        return self._resume_newest(config, dataset, [path for _, path in reversed(checkpoints)])

    def _resume_newest(
        self, config: TrainConfig, dataset: dict[str, Any], newest_first: list[Path]
    ) -> Resumed:
        """Load the newest loadable checkpoint of ``newest_first``; what is left otherwise."""
        damaged: list[Path] = []
        partly_loaded = False  # a failed load may have changed the model or optimizer already
        for path in newest_first:
            try:
                record = read_checkpoint_record(path)
            except CheckpointDamaged as exc:
                logger.warning("checkpoint %s is damaged (%s); trying the one before it", path, exc)
                damaged.append(path)
                continue
            problem = self._problem(path, record, config, dataset)
            if problem is not None:
                if config.resume != "auto":
                    raise ConfigError(
                        f"{path}: cannot resume, {problem}. Run with --resume auto to move these "
                        "checkpoints aside and train from scratch, use the same settings and "
                        "data, or use another --output-dir"
                    )
                self._set_aside_all(f"{path}: {problem}")
                return Resumed(restart=partly_loaded)
            if self._load(path):
                self._mark_damaged(damaged)
                return Resumed(path)
            partly_loaded = True  # also where this process loaded it and another could not
            damaged.append(path)
        self._mark_damaged(damaged)
        if not damaged:
            logger.info("no checkpoint in %s: starting from scratch", self.directory)
            self._set_aside_leftovers()
            return Resumed()
        if config.resume != "auto":
            raise ConfigError(
                f"{self.directory}: every checkpoint is damaged "
                f"({', '.join(DAMAGED_PREFIX + p.name for p in damaged)}); run with --resume "
                "auto to move them aside and train from scratch"
            )
        self._set_aside_all("no loadable checkpoint")
        return Resumed(restart=partly_loaded)

    def _problem(
        self, path: Path, record: dict[str, Any], config: TrainConfig, dataset: dict[str, Any]
    ) -> str | None:
        """Why ``path`` cannot be resumed by this run (None: it can; warns where it can with
        another process count)."""
        world_size = self.accelerator.num_processes
        if record.get("dataset") is None:
            logger.warning("%s records no dataset fingerprint: the data is not checked", path)
        problem = incompatibility(record, config, dataset)
        written_by = record.get("world_size")
        if problem is None and config.resume == "auto" and written_by not in (None, world_size):
            # another process count is another global batch: a run of other settings
            return (
                f"it was trained by {written_by} processes and this run has {world_size} (global "
                f"batch {written_by * config.batch_size} -> {world_size * config.batch_size})"
            )
        if problem is None and written_by is not None and written_by != world_size:
            logger.warning(
                "%s was written by %s processes, resuming with %s: the global batch and the "
                "data order per process change",
                path,
                written_by,
                world_size,
            )
        return problem

    def _load(self, path: Path) -> bool:
        """Load ``path`` into the registered objects; whether every process could."""
        try:
            self.accelerator.load_state(str(path))
            ok = True
        except Exception as exc:  # torch, safetensors and pickle raise many types for bad files
            logger.warning("checkpoint %s is damaged (%s); trying the one before it", path, exc)
            ok = False
        if self.accelerator.num_processes > 1:  # every process must resume from the same one
            flag = torch.tensor(float(ok), device=self.accelerator.device)
            total = float(self.accelerator.reduce(flag, reduction="sum"))
            ok = total == self.accelerator.num_processes
        return ok

    def _mark_damaged(self, damaged: list[Path]) -> None:
        """Rename the checkpoints that failed to load ``damaged-...`` (all processes wait)."""
        self.accelerator.wait_for_everyone()
        if self.main:
            for path in damaged:
                target = _rename(path, DAMAGED_PREFIX)
                logger.warning("renamed the damaged checkpoint %s to %s", path, target.name)
        self.accelerator.wait_for_everyone()
