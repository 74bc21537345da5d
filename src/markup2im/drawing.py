"""Drawing markup with a trained model into files: what ``markup2im draw`` runs.

The sampling itself is :meth:`markup2im.pipeline.Markup2ImModel.draw` (also the Python API and
what the web demo calls); this module loads the model, shows a progress bar over the denoising
steps and writes PNGs, GIFs and, for a markup file, ``manifest.csv``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from markup2im.errors import DataError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("index", "line", "filename", "seed", "truncated_tokens", "error", "markup")
GIF_FRAMES = 50  # about this many frames in a denoising GIF, whatever the number of steps
CHUNK = 64  # markups of a file drawn (and held in memory) at once


@dataclass(frozen=True)
class Written:
    """One file that ``draw`` wrote, and what it shows."""

    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def load_model(model_dir: str | os.PathLike[str], device: str = "auto"):
    """The model of ``model_dir`` on ``device`` (auto: CUDA when available)."""
    from markup2im.pipeline import Markup2ImModel
    from markup2im.sampling import resolve_device

    return Markup2ImModel.from_pretrained(model_dir, device=resolve_device(device))


def gif_every(model, sampler: str, steps: int | None) -> int:
    """Keep every k-th step's frame so that a GIF has about ``GIF_FRAMES`` frames."""
    from markup2im.sampling import make_scheduler

    total = len(make_scheduler(sampler, model.scheduler_config, steps).timesteps)
    return max(1, total // GIF_FRAMES)


@contextmanager
def step_bar(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar over denoising steps, as a ``progress(done, total)`` callback."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _describe(image, sampler: str, steps: int, seed: int) -> str:
    return f"{image.width}x{image.height} {image.mode} image, {sampler} {steps} steps, seed {seed}"


def _preview(markup: str, limit: int = 60) -> str:
    return repr(markup if len(markup) <= limit else markup[: limit - 1] + "\u2026")


def draw_one(
    model_dir: str | os.PathLike[str],
    markup: str,
    output: str | os.PathLike[str],
    *,
    gif: str | os.PathLike[str] | None = None,
    sampler: str = "ddim",
    steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> list[Written]:
    """Draw one markup into the PNG ``output`` (and its denoising into the GIF ``gif``)."""
    from markup2im.atomic import save_image
    from markup2im.sampling import make_scheduler
    from markup2im.visualize import frames_gif

    if not markup.strip():
        raise DataError("the markup to draw is empty")
    for path, suffix in ((output, ".png"), (gif, ".gif")):
        if path is not None and Path(path).suffix.lower() != suffix:
            raise DataError(f"{path}: give a file name that ends in {suffix}")
    model = load_model(model_dir, device)
    n_steps = len(make_scheduler(sampler, model.scheduler_config, steps).timesteps)
    with step_bar(f"draw {sampler}") as progress:
        result = model.draw(
            [markup],
            sampler=sampler,
            steps=steps,
            seed=seed,
            frames=gif is not None,
            frames_every=gif_every(model, sampler, steps),
            progress=progress,
        )
    images, frames = result if gif is not None else (result, None)
    save_image(images[0], output)
    what = f"{_describe(images[0], sampler, n_steps, seed)} of {_preview(markup)}"
    written = [Written(Path(output), what)]
    if gif is not None:
        count = frames_gif(frames[0], gif)
        written.append(Written(Path(gif), f"denoising GIF, {count} frames"))
    return written


def draw_file(
    model_dir: str | os.PathLike[str],
    markup_file: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    gifs: bool = False,
    sampler: str = "ddim",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
) -> list[Written]:
    """Draw every markup of a ``.txt`` / ``.jsonl`` file into ``output_dir``.

    Images are named as ``markup2im render`` names them (``<10 hex>.png``), so a rendered
    directory of the same file is their gold for ``markup2im evaluate``. Markup ``i`` (0-based,
    blank lines skipped) is drawn with seed ``seed + i``. Lines that are not valid UTF-8 are not
    drawn; ``manifest.csv`` lists every markup with its line, file, seed, the tokens cut from it
    (beyond the model's limit) and its error.
    """
    from markup2im.atomic import save_image, write_text
    from markup2im.data.markup_files import read_markup_file
    from markup2im.data.render import assign_filenames
    from markup2im.sampling import make_scheduler
    from markup2im.visualize import frames_gif

    source = read_markup_file(markup_file)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output directory {out} is a file")
    model = load_model(model_dir, device)
    names = assign_filenames(source.markups)
    cut = model.encoder.overflow(source.markups)
    n_steps = len(make_scheduler(sampler, model.scheduler_config, steps).timesteps)
    every = gif_every(model, sampler, steps)
    out.mkdir(parents=True, exist_ok=True)
    count = len(source.markups)
    batches_before = 0
    written: list[Written] = []
    with step_bar(f"draw {sampler}") as progress:
        total = n_steps * sum(
            -(-min(CHUNK, count - start) // batch_size) for start in range(0, count, CHUNK)
        )
        for start in range(0, count, CHUNK):
            chunk = source.markups[start : start + CHUNK]
            offset = batches_before * n_steps

            def chunk_progress(done: int, _total: int, offset: int = offset) -> None:
                progress(offset + done, total)

            result = model.draw(
                chunk,
                sampler=sampler,
                steps=steps,
                seed=seed + start,
                frames=gifs,
                frames_every=every,
                batch_size=batch_size,
                progress=chunk_progress,
            )
            batches_before += -(-len(chunk) // batch_size)
            images, frames = result if gifs else (result, None)
            for k, image in enumerate(images):
                i = start + k
                if i in source.errors:
                    continue
                path = out / names[i]
                save_image(image, path)
                what = f"line {source.lines[i]}, seed {seed + i}: {_preview(source.markups[i])}"
                written.append(Written(path, what))
                if frames is not None:
                    gif = path.with_suffix(".gif")
                    frames_gif(frames[k], gif)
                    written.append(Written(gif, f"denoising GIF of line {source.lines[i]}"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for i, markup in enumerate(source.markups):
        error = source.errors.get(i, "")
        writer.writerow(
            [i, source.lines[i], "" if error else names[i], seed + i, cut[i], error, markup]
        )
    manifest = out / MANIFEST
    write_text(manifest, buffer.getvalue())
    drawn = count - len(source.errors)
    written.append(
        Written(
            manifest,
            f"manifest: {drawn} of {count} markups drawn as {images_mode(model)} images "
            f"({sampler}, {n_steps} steps, seeds {seed}..{seed + count - 1})",
        )
    )
    truncated = sum(c > 0 for c in cut)
    if truncated:
        logger.warning(
            "%s: %d markups were longer than the model's %d tokens and truncated (by %d tokens at "
            "most); the manifest's truncated_tokens column says by how many",
            markup_file,
            truncated,
            model.encoder.max_length,
            max(cut),
        )
    return written


def images_mode(model) -> str:
    """'WxH L' or 'WxH RGB': the size and colour mode of the model's images."""
    return f"{model.width}x{model.height} {'L' if model.channels == 1 else 'RGB'}"
