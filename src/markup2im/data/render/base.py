"""What every renderer module provides, and the record of one rendered item.

A renderer module (``latex``, ``html``, ``lilypond``, ``smiles``) defines:

- ``BATCH_SIZE``: how many items one worker takes at a time;
- ``check_available()``: raise RenderError naming the missing program and how to install it;
- ``render_batch(markups, ctx) -> list[Raw]``: the raw rendering (or the error) of each item.

The dispatcher in ``markup2im.data.render`` does the rest (canvas, PNG, parallelism, manifest).

Items are untrusted and must not reach each other: a renderer run (one sandboxed process, see
``process.py``) gets a work directory of its own (``run_dir``), the only one it can see or
write, and takes several items only where no item can change another's image or files (LaTeX
formulas made only of known-safe commands; SMILES, which are data that no code reads as a
program). Everything else (LilyPond's Scheme, HTML, any other formula) runs one item per run.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from markup2im.data.render.process import Limits, Outcome
from markup2im.errors import RenderError


@dataclass
class BatchContext:
    """Where and how one batch is rendered."""

    workdir: Path  # an empty private directory, removed after the batch
    timeout: float  # seconds allowed per item
    width: int  # canvas size, for renderers that draw at a given size
    height: int
    cancel: threading.Event = field(default_factory=threading.Event)
    limits: Limits = field(default_factory=Limits)  # memory and disk of each renderer process


def run_dir(ctx: BatchContext, name: str) -> Path:
    """A new, empty work directory for one renderer run (the only one that run can see)."""
    path = ctx.workdir / name
    path.mkdir()
    return path


@dataclass
class Raw:
    """A renderer's output for one item: an image, or the renderer's own error line."""

    image: Image.Image | None = None
    error: str = ""


def open_image(path: Path, what: str = "renderer output") -> Raw:
    """The image at ``path`` as a Raw, or a Raw with the error (never raises for bad files)."""
    try:
        with Image.open(path) as image:
            image.load()
            return Raw(image=image.copy())
    except (OSError, ValueError, Image.DecompressionBombError, MemoryError) as exc:
        return Raw(error=clip(f"cannot read the {what}: {exc}"))


def crash_note(outcome: Outcome, limits: Limits) -> str:
    """What a run that ended without its image says about the bounds it ran under."""
    if outcome.limit:
        return outcome.limit
    if outcome.returncode is not None and (outcome.returncode > 128 or outcome.returncode < 0):
        # a failed allocation often ends in a crash that prints nothing about memory
        return f"(a renderer may use {limits.memory_mb} MiB of address space: --memory-limit)"
    return ""


def timeout_error(timeout: float) -> str:
    """The error recorded for an item whose renderer was killed."""
    return f"timed out: renderer killed after {timeout:g} s without finishing this item"


def require_programs(*programs: str, install: str) -> None:
    """Raise RenderError when one of ``programs`` is not on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise RenderError(f"renderer program(s) not found on PATH: {', '.join(missing)}; {install}")


def clip(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters (renderer messages can echo huge inputs)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
