"""Shared helpers of the figures tests: distinct frames, frame directories, GIFs read back and
real ``evaluate`` outputs to build tables and plots from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from markup2im.metrics import evaluate_dirs


def frame(step: int, size: tuple[int, int] = (64, 64), mode: str = "L") -> Image.Image:
    """A distinct image per step: a dark bar whose length grows with the step."""
    array = np.full((size[1], size[0]), 255, dtype=np.uint8)
    array[10:20, : 3 + 5 * step] = 30
    array[(size[1] // 2 + step) % size[1], :] = 120
    image = Image.fromarray(array, mode="L")
    return image.convert(mode)


def write_frames(directory: Path, steps: list[int], **kwargs: object) -> Path:
    directory.mkdir(parents=True)
    for step in steps:
        frame(step, **kwargs).save(directory / f"step_{step:04d}.png")  # type: ignore[arg-type]
    return directory


def gif_frames(path: Path) -> tuple[list[np.ndarray], list[int], object]:
    images, durations = [], []
    with Image.open(path) as gif:
        loop = gif.info.get("loop")
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
            images.append(np.asarray(gif.convert("L")))
    return images, durations, loop


def make_image_dirs(root: Path) -> tuple[Path, Path, Path]:
    gold, base, ss = root / "gold", root / "baseline", root / "ss"
    for directory in (gold, base, ss):
        directory.mkdir(parents=True)
    for i in range(5):
        frame(i, size=(48, 24)).save(gold / f"ex{i}.png")
        frame(i + 1, size=(48, 24)).save(base / f"ex{i}.png")
        frame(i + 3, size=(48, 24)).save(ss / f"ex{i}.png")
    frame(9, size=(48, 24)).save(gold / "only_gold.png")
    return gold, base, ss


def evaluate_two_methods(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Real evaluate outputs (metrics CSV, summary JSON) for two methods, by ``dataset/method``;
    the images lie under ``tmp_path / "images"`` (see :func:`make_image_dirs`)."""
    gold, base, ss = make_image_dirs(tmp_path / "images")
    outputs = {}
    for label, pred in (("math/baseline", base), ("math/scheduled_sampling", ss)):
        stem = label.replace("/", "_")
        table, summary = tmp_path / f"{stem}.csv", tmp_path / f"{stem}.json"
        evaluate_dirs(pred, gold, table, summary, workers=1)
        outputs[label] = (table, summary)
    return outputs
