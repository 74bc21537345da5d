"""Denoising GIFs: one example's frames over the steps, or gold and several runs side by side.

Frames come from ``generate --frames-dir`` (``frames/<stem>/step_NNNN.png``) or from memory (the
demo and ``draw``); every GIF loops forever and holds its last frame longer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from markup2im.atomic import atomic_path
from markup2im.errors import ConfigError, DataError
from markup2im.figures.images import (
    PAD,
    common_mode,
    enlarge,
    fill_color,
    label_band_height,
    label_row,
    open_image,
    upscale_factor,
)
from markup2im.figures.tables import Labelled
from markup2im.metrics import list_images

log = logging.getLogger(__name__)


def frame_number(path: Path) -> int:
    """The step number of a frame file (the last group of digits in its name), -1 if none."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def list_frames(frames_dir: str | os.PathLike[str]) -> list[Path]:
    """Frame images of ``frames_dir`` in step order; DataError if missing or empty."""
    root = Path(frames_dir)
    if not root.is_dir():
        raise DataError(f"{root}: frames directory not found")
    frames = list(list_images(root).values())
    if not frames:
        raise DataError(f"{root}: no frame images (expected step_<NNNN>.png files)")
    return sorted(frames, key=lambda p: (frame_number(p), p.name))


def select_frames(frames: Sequence[Any], every: int) -> list[Any]:
    """Every ``every``-th frame starting with the first, always ending with the last one."""
    if every < 1:
        raise ConfigError(f"every (--every) must be >= 1, got {every}")
    chosen = list(frames[::every])
    if chosen[-1] != frames[-1]:
        chosen.append(frames[-1])
    return chosen


def save_gif(
    frames: Sequence[Image.Image],
    output: str | os.PathLike[str],
    frame_ms: int,
    final_hold_ms: int,
) -> None:
    """Write an endlessly looping GIF; the last frame stays ``final_hold_ms`` on screen."""
    if not frames:
        raise DataError(f"{output}: no frames to write")
    durations = [int(frame_ms)] * (len(frames) - 1) + [int(final_hold_ms)]
    with atomic_path(output) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=list(frames[1:]),
            duration=durations,
            loop=0,
            disposal=1,
        )
    log.info("wrote %s (%d frames)", output, len(frames))


def denoise_gif(
    frames_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    every: int = 1,
    frame_ms: int = 80,
    final_hold_ms: int = 2000,
    scale: int | None = None,
) -> int:
    """GIF of one example's denoising (x0 predictions over the steps). Returns the frame count."""
    paths = select_frames(list_frames(frames_dir), every)
    return frames_gif([open_image(p) for p in paths], output, 1, frame_ms, final_hold_ms, scale)


def frames_gif(
    images: Sequence[Image.Image],
    output: str | os.PathLike[str],
    every: int = 1,
    frame_ms: int = 80,
    final_hold_ms: int = 2000,
    scale: int | None = None,
) -> int:
    """``denoise_gif`` of frames in memory (in step order). Returns the frame count."""
    if not images:
        raise DataError(f"{output}: no frames to write")
    images = [images[i] for i in select_frames(range(len(images)), every)]
    factor = scale or upscale_factor(images[0].size)
    mode = common_mode(images)
    frames = [enlarge(im.convert(mode), factor) for im in images]
    save_gif(frames, output, frame_ms, final_hold_ms)
    return len(frames)


def _run_frames(
    gold: str | os.PathLike[str], gold_image: Image.Image, runs: Labelled, every: int
) -> list[list[Image.Image]]:
    """Each run's chosen frames; DataError naming the directory whose size is not the gold's."""
    sequences = [
        [open_image(p) for p in select_frames(list_frames(d), every)] for _label, d in runs
    ]
    for (label, directory), sequence in zip(runs, sequences, strict=True):
        if sequence[0].size != gold_image.size:
            raise DataError(
                f"{directory} ({label}): frames are {sequence[0].width}x{sequence[0].height}, "
                f"gold {gold} is {gold_image.width}x{gold_image.height}"
            )
    return sequences


def _compare_background(
    gold_image: Image.Image, labels: Sequence[str], mode: str, factor: int
) -> Image.Image:
    """The still part of every comparison frame: the labels and the gold panel."""
    panel_w, panel_h = gold_image.width * factor, gold_image.height * factor
    band = label_band_height()
    width = len(labels) * panel_w + (len(labels) + 1) * PAD
    height = band + panel_h + PAD
    base = Image.new(mode, (width, height), fill_color(mode))
    label_row(ImageDraw.Draw(base), labels, panel_w, mode)
    base.paste(enlarge(gold_image.convert(mode), factor), (PAD, band))
    return base


def compare_gif(
    gold: str | os.PathLike[str],
    runs: Labelled,
    output: str | os.PathLike[str],
    every: int = 1,
    frame_ms: int = 80,
    final_hold_ms: int = 2000,
    scale: int | None = None,
) -> int:
    """Side-by-side GIF: the gold image, then each run's denoising frames, each under its label.

    Runs with fewer frames hold their final image. Returns the number of GIF frames.
    """
    if not runs:
        raise DataError("compare_gif: no frame directories given")
    gold_image = open_image(gold)
    sequences = _run_frames(gold, gold_image, runs, every)
    mode = common_mode([gold_image] + [im for seq in sequences for im in seq])
    factor = scale or upscale_factor(gold_image.size)
    labels = ["gold"] + [label for label, _ in runs]
    base = _compare_background(gold_image, labels, mode, factor)
    panel_w, band = gold_image.width * factor, label_band_height()
    frames = []
    for step in range(max(len(seq) for seq in sequences)):
        frame = base.copy()
        for k, sequence in enumerate(sequences, start=1):
            image = sequence[min(step, len(sequence) - 1)]
            frame.paste(enlarge(image.convert(mode), factor), (PAD + k * (panel_w + PAD), band))
        frames.append(frame)
    save_gif(frames, output, frame_ms, final_hold_ms)
    return len(frames)
