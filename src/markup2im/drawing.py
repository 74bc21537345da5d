"""Drawing markup with a trained model into files: what ``markup2im draw`` runs.

The drawing itself is :class:`markup2im.pipeline.Markup2ImPipeline` (also the Python API and
what the web demo calls); this module loads the model, shows a progress bar over the denoising
steps and writes PNGs, GIFs and, for a markup file, ``manifest.csv``. Markup ``i`` of a file is
drawn as a single markup with seed ``seed + i`` (example 0 of that seed), so ``markup2im draw
--seed`` with the manifest's seed redraws one line alone.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from markup2im.atomic import save_image, write_text
from markup2im.data.markup_files import (
    MarkupFile,
    read_markup_file,
    replaced_note,
    unwritable,
    writable,
)
from markup2im.data.render import assign_filenames
from markup2im.eps_scaling import EpsScale, EpsScaleLike, parse_eps_scale
from markup2im.errors import DataError
from markup2im.figures.gif import frames_gif
from markup2im.guidance import guided, parse_guidance_scale
from markup2im.model import Markup2ImModel
from markup2im.names import frames_every
from markup2im.pipeline import Markup2ImPipeline, Progress, StepBar

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("index", "line", "filename", "seed", "truncated_tokens", "error", "markup")
# markups of a file drawn (and held in memory) at once; batches never straddle two chunks
CHUNK = 64


@dataclass(frozen=True)
class Written:
    """One file that ``draw`` wrote, and what it shows."""

    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass(frozen=True)
class ChunkProgress:
    """The progress of one chunk's call as steps of the whole file's."""

    progress: Progress
    offset: int  # steps of the chunks before
    total: int  # steps of the whole file

    def __call__(self, done: int, _total: int) -> None:
        self.progress(self.offset + done, self.total)


def _adjusted(eps_scale: EpsScale | None, guidance_scale: float | None) -> str:
    """', guidance scale 3, eps scale 1.01' for what a draw adjusts in its sampler, else ''."""
    guidance = f", guidance scale {guidance_scale:g}" if guided(guidance_scale) else ""
    scaled = "" if eps_scale is None or eps_scale.identity else f", eps scale {eps_scale}"
    return guidance + scaled


def _describe(
    image: Image.Image,
    sampler: str,
    steps: int,
    seed: int,
    eps_scale: EpsScale | None = None,
    guidance_scale: float | None = None,
) -> str:
    return (
        f"{image.width}x{image.height} {image.mode} image, "
        f"{sampler} {steps} steps{_adjusted(eps_scale, guidance_scale)}, seed {seed}"
    )


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
    eps_scale: EpsScaleLike = None,
    guidance_scale: float | None = None,
) -> list[Written]:
    """Draw one markup into the PNG ``output`` (and its denoising into the GIF ``gif``);
    ``eps_scale`` is the sampler's epsilon scaling and ``guidance_scale`` its classifier-free
    guidance (None or 1: none)."""
    scaling = parse_eps_scale(eps_scale)  # before the model loads
    guidance = parse_guidance_scale(guidance_scale)
    if not markup.strip():
        raise DataError("the markup to draw is empty")
    problem = unwritable(markup)  # bytes of the command line that are not UTF-8 come as surrogates
    if problem:
        raise DataError(f"the markup to draw holds a {problem}; give it as UTF-8 text")
    for path, suffix in ((output, ".png"), (gif, ".gif")):
        if path is not None and Path(path).suffix.lower() != suffix:
            raise DataError(f"{path}: give a file name that ends in {suffix}")
    pipe = Markup2ImPipeline.from_pretrained(model_dir, device=device)
    n_steps = pipe.num_steps(sampler, steps)
    with StepBar(f"draw {sampler}") as progress:
        drawing = pipe(
            markup,
            sampler=sampler,
            steps=steps,
            seed=seed,
            frames_every=frames_every(n_steps) if gif is not None else 0,
            progress=progress,
            eps_scale=scaling,
            guidance_scale=guidance,
        )
    image = drawing.images[0]
    save_image(image, output)
    written = [
        Written(
            Path(output),
            f"{_describe(image, sampler, n_steps, seed, scaling, guidance)} of {_preview(markup)}",
        )
    ]
    if gif is not None:
        count = frames_gif(drawing.frames[0], gif)
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
    eps_scale: EpsScaleLike = None,
    guidance_scale: float | None = None,
) -> list[Written]:
    """Draw every markup of a ``.txt`` / ``.jsonl`` file into ``output_dir``.

    Images are named as ``markup2im render`` names them (``<10 hex>.png``), so a rendered
    directory of the same file is their gold for ``markup2im evaluate``. Markup ``i`` (0-based,
    blank lines skipped) is drawn with seed ``seed + i``. Lines that are not valid UTF-8 are not
    drawn; ``manifest.csv`` lists every markup with its line, file, seed, the tokens cut from it
    (beyond the model's limit) and its error. ``eps_scale`` is the sampler's epsilon scaling
    and ``guidance_scale`` its classifier-free guidance (None or 1: none).
    """
    scaling = parse_eps_scale(eps_scale)  # before the model loads
    guidance = parse_guidance_scale(guidance_scale)
    source = read_markup_file(markup_file)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output directory {out} is a file")
    pipe = Markup2ImPipeline.from_pretrained(model_dir, device=device)
    names = assign_filenames(source.markups)
    cut = pipe.model.encoder.overflow(source.markups)
    n_steps = pipe.num_steps(sampler, steps)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in names]
    written = _draw_chunks(
        pipe, source, paths, gifs=gifs, sampler=sampler, steps=steps, seed=seed,
        batch_size=batch_size, eps_scale=scaling, guidance_scale=guidance,
    )  # fmt: skip
    manifest = out / MANIFEST
    write_text(manifest, manifest_csv(source, names, cut, seed))
    count = len(source.markups)
    drawn = count - len(source.errors)
    written.append(
        Written(
            manifest,
            f"manifest: {drawn} of {count} markups drawn as {images_mode(pipe.model)} images "
            f"({sampler}, {n_steps} steps{_adjusted(scaling, guidance)}, "
            f"seeds {seed}..{seed + count - 1})",
        )
    )
    if any(cut):
        logger.warning(
            "%s: %d markups were longer than the model's %d tokens and truncated (by %d tokens at "
            "most); the manifest's truncated_tokens column says by how many",
            markup_file,
            sum(c > 0 for c in cut),
            pipe.model.encoder.max_length,
            max(cut),
        )
    return written


def _draw_chunks(
    pipe: Markup2ImPipeline,
    source: MarkupFile,
    paths: Sequence[Path],
    *,
    gifs: bool,
    sampler: str,
    steps: int | None,
    seed: int,
    batch_size: int,
    eps_scale: EpsScale | None = None,
    guidance_scale: float | None = None,
) -> list[Written]:
    """Draw the file's markups CHUNK at a time (line ``i`` as example 0 of ``seed + i``) and
    write each one's image and GIF to ``paths[i]`` as its chunk is done."""
    count = len(source.markups)
    n_steps = pipe.num_steps(sampler, steps)
    starts = range(0, count, CHUNK)
    batches = [-(-min(CHUNK, count - start) // batch_size) for start in starts]
    written: list[Written] = []
    with StepBar(f"draw {sampler}") as progress:
        for number, start in enumerate(starts):
            chunk = source.markups[start : start + CHUNK]
            drawing = pipe(
                chunk,
                sampler=sampler,
                steps=steps,
                seed=[seed + start + k for k in range(len(chunk))],
                indices=[0] * len(chunk),
                frames_every=frames_every(n_steps) if gifs else 0,
                batch_size=batch_size,
                progress=ChunkProgress(
                    progress, sum(batches[:number]) * n_steps, sum(batches) * n_steps
                ),
                eps_scale=eps_scale,
                guidance_scale=guidance_scale,
            )
            for k, image in enumerate(drawing.images):
                frames = drawing.frames[k] if gifs else None
                i = start + k
                written += _write_drawn(source, i, image, frames, paths[i], seed)
    return written


def _write_drawn(
    source: MarkupFile,
    i: int,
    image: Image.Image,
    frames: Sequence[Image.Image] | None,
    path: Path,
    seed: int,
) -> list[Written]:
    """Write markup ``i``'s image (and GIF) unless its line could not be read."""
    if i in source.errors:
        return []
    save_image(image, path)
    written = [
        Written(path, f"line {source.lines[i]}, seed {seed + i}: {_preview(source.markups[i])}")
    ]
    if frames is not None:
        gif = path.with_suffix(".gif")
        frames_gif(frames, gif)
        written.append(Written(gif, f"denoising GIF of line {source.lines[i]}"))
    return written


def manifest_csv(source: MarkupFile, names: Sequence[str], cut: Sequence[int], seed: int) -> str:
    """manifest.csv: every markup of the file with its line, file, seed, cut tokens, error.

    Text a manifest cannot hold (a lone surrogate, NUL) is shown as U+FFFD and the row's error
    says so."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for i, markup in enumerate(source.markups):
        failed = source.errors.get(i, "")
        error, in_error = writable(failed)
        markup, in_markup = writable(markup)
        if in_markup + in_error:
            error = "; ".join(filter(None, [error, replaced_note(in_markup + in_error)]))
        writer.writerow(
            [i, source.lines[i], "" if failed else names[i], seed + i, cut[i], error, markup]
        )
    return buffer.getvalue()


def images_mode(model: Markup2ImModel) -> str:
    """'WxH L' or 'WxH RGB': the size and colour mode of the model's images."""
    return f"{model.width}x{model.height} {'L' if model.channels == 1 else 'RGB'}"
