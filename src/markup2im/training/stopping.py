"""When a run stops early: signals (Slurm preemption, Ctrl-C), the Slurm walltime deadline, and
the check that a process of a multi-process launch really runs in a process group.

SIGTERM or SIGUSR1 (what Slurm sends before preempting) and SIGINT (Ctrl-C; a second one stops
at once) make the trainer finish its step, save a checkpoint and raise
:class:`TrainingInterrupted`; so does reaching the deadline (``markup2im train
--walltime-margin``: a margin before the Slurm job's time limit, see :func:`slurm_job_end`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from markup2im.errors import ConfigError

logger = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a process killed by SIGTERM reports
EXIT_KEYBOARD = 130  # 128 + SIGINT: what a shell reports for Ctrl-C


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


def clock(stamp: float) -> str:
    """A unix time as local date and time, for messages."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


class Deadline:
    """The time at which training checkpoints and stops (None: never), and the Slurm time
    limit behind it (messages only)."""

    def __init__(self, at: float | None, time_limit: float | None = None) -> None:
        self.at, self.time_limit = at, time_limit

    def passed(self) -> bool:
        return self.at is not None and _now() >= self.at

    def announce(self) -> None:
        """Log when the run will stop, and warn when that time has passed already."""
        if self.at is None:
            return
        logger.info(
            "will checkpoint and stop at the first step after %s%s",
            clock(self.at),
            ""
            if self.time_limit is None
            else f", {self.time_limit - self.at:.0f} s before the time limit "
            f"{clock(self.time_limit)}",
        )
        if self.passed():
            logger.warning(
                "the deadline has passed already: training one step (with several processes, "
                "up to the first read-back) and a checkpoint"
            )

    def reason(self) -> str:
        """What TrainingInterrupted says when the deadline stopped the run."""
        now = _now()
        if self.time_limit is not None:
            return (
                f"stopping {self.time_limit - now:.0f} s before the Slurm time limit "
                f"({clock(self.time_limit)})"
            )
        return f"reached the deadline {clock(float(self.at or now))}"
