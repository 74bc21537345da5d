"""What the workflow removes once Snakemake has recorded its jobs as done: the checkpoints of
finished trainings.

A training job does not remove its own checkpoints: Snakemake records a job as complete only
after its command returns, and a job that finishes while Snakemake is gone (killed, its node
lost) is marked incomplete, so the rerun removes its model and trains again. With the
checkpoints still there, that rerun resumes from them (``--resume auto`` checks that they are
compatible) instead of starting from scratch. They are removed when a Snakemake run succeeds
(``onsuccess`` in rules/train.smk), for every training whose outputs exist and that no trainer
holds.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from markup2im.training.lock import LOCK_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Training:
    """One training job's run directory and outputs (paths relative to the working directory)."""

    run_dir: str
    outputs: tuple[str, ...]

    @property
    def checkpoints(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    def finished(self) -> bool:
        """Every output is there and no trainer holds the run directory."""
        held = (Path(self.run_dir) / LOCK_NAME).exists()
        return not held and all(Path(p).exists() for p in self.outputs)


def remove_finished_checkpoints(trainings: Iterable[Training]) -> list[Path]:
    """Remove the checkpoints of the finished ``trainings``; the directories removed."""
    removed = []
    for training in trainings:
        if training.checkpoints.is_dir() and training.finished():
            shutil.rmtree(training.checkpoints)
            removed.append(training.checkpoints)
    if removed:
        logger.info(
            "removed the checkpoints of finished trainings: %s", ", ".join(map(str, removed))
        )
    return removed
