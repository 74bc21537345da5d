"""The dataset job (``markup2im generate``): draw the first examples of a split into files.

Writes ``images/<filename>`` (the model's), ``gold/<filename>`` (the dataset's, at the model's
size) and, with frames, ``frames/<stem>/step_<NNNN>.png`` under one output directory. The drawing
is :class:`markup2im.pipeline.Markup2ImPipeline`'s: example ``i`` of the split is example ``i``
of the seed, so an example's image does not depend on the batch size, on ``limit`` or on
``only`` (the workflow draws the frames of a few examples in a job of their own).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from markup2im.atomic import save_image
from markup2im.cuda import configure_cuda
from markup2im.data.datasets import DatasetInfo, load_split, read_dataset_info
from markup2im.eps_scaling import EpsScale, EpsScaleLike, parse_eps_scale
from markup2im.errors import ConfigError, DataError
from markup2im.guidance import guided, parse_guidance_scale
from markup2im.images import load_image
from markup2im.model import Markup2ImModel
from markup2im.names import SAMPLERS
from markup2im.pipeline import Drawing, Markup2ImPipeline, StepBar, resolve_device
from markup2im.sampling import check_precision

logger = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    """What ``generate`` wrote."""

    count: int
    images_dir: Path
    gold_dir: Path
    frames_dir: Path
    seconds: float


@dataclass
class SplitExamples:
    """The examples of a split that one run draws."""

    info: DatasetInfo
    images: Any  # the split's image column, undecoded
    filenames: list[str]  # of the first ``limit`` examples, as plain PNG names
    markups: list[str]  # of the first ``limit`` examples
    positions: list[int]  # the indices in the split of the examples drawn
    frames_for: set[str]  # the filenames whose frames are kept
    where: str  # the dataset and split, for messages

    @property
    def drawn(self) -> list[str]:
        """The filenames of the examples drawn."""
        return [self.filenames[i] for i in self.positions]


def generate(
    model_dir: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    sampler: str = "ddpm",
    num_inference_steps: int | None = None,
    seed: int = 1234,
    frames_every: int = 0,
    frames_for: Sequence[str] | None = None,
    only: Sequence[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    tf32: bool = True,
    eps_scale: EpsScaleLike = None,
    guidance_scale: float | None = None,
) -> GenerateResult:
    """Generate the first ``limit`` examples of a split: images, gold images and frames.

    ``only`` restricts the run to the examples of those filenames (among the first ``limit``);
    each keeps the noise of its index in the split, so its image is the one a full run makes.
    Frames (every ``frames_every``-th step) are kept for the examples named in ``frames_for``
    (all generated examples when it is not given). The output's images/, gold/ and frames/ are
    emptied first, once the model and data have loaded, so that an earlier run never mixes in.

    ``precision`` (fp32, bf16) and ``channels_last`` are the pipeline's speed options; on CUDA
    TF32 matmuls and cuDNN autotuning are enabled unless ``tf32`` is false (what batch invariance
    holds then: :mod:`markup2im.sampling`). ``eps_scale`` is the sampler's epsilon scaling
    (:mod:`markup2im.eps_scaling`; None or 1: none), ``guidance_scale`` its classifier-free
    guidance (:mod:`markup2im.guidance`; None or 1: none).
    """
    check_settings(sampler, batch_size, limit, frames_every, precision)
    scaling = parse_eps_scale(eps_scale)
    guidance = parse_guidance_scale(guidance_scale)
    started = time.perf_counter()
    dirs = OutputDirs.under(output_dir)
    examples = read_examples(dataset_dir, split, limit, only, frames_for, frames_every)
    pipe = load_pipeline(model_dir, device, channels_last=channels_last, tf32=tf32)
    check_sizes(pipe.model, examples.info, model_dir, dataset_dir)
    dirs.clear()
    logger.info(
        "generating %d %s images with %s (%d steps%s%s) on %s, batch %d, %s%s",
        len(examples.positions),
        split,
        sampler,
        pipe.num_steps(sampler, num_inference_steps),
        "" if scaling is None or scaling.identity else f", eps scale {scaling}",
        f", guidance scale {guidance:g}" if guided(guidance) else "",
        pipe.model.device,
        batch_size,
        precision,
        ", channels-last" if channels_last else "",
    )
    draw_examples(
        pipe,
        examples,
        dirs,
        sampler=sampler,
        steps=num_inference_steps,
        seed=seed,
        frames_every=frames_every,
        batch_size=batch_size,
        precision=precision,
        eps_scale=scaling,
        guidance_scale=guidance,
    )
    seconds = time.perf_counter() - started
    count = len(examples.positions)
    logger.info("wrote %d images to %s in %.1f s", count, dirs.images, seconds)
    return GenerateResult(count, dirs.images, dirs.gold, dirs.frames, seconds)


@dataclass(frozen=True)
class OutputDirs:
    """Where a run writes: images/, gold/ and frames/ of one output directory."""

    images: Path
    gold: Path
    frames: Path

    @classmethod
    def under(cls, output_dir: str | Path) -> OutputDirs:
        """The three directories under ``output_dir``; DataError when it is a file."""
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise DataError(f"output directory {out} is a file")
        return cls(out / "images", out / "gold", out / "frames")

    def clear(self) -> None:
        """Remove what an earlier run wrote; DataError for a file in a directory's place."""
        for stale in (self.images, self.gold, self.frames):
            if stale.is_dir():
                logger.info("removing the earlier %s", stale)
                shutil.rmtree(stale)
            elif stale.exists():
                raise DataError(f"{stale} is a file; generate writes a directory there")


def check_settings(
    sampler: str, batch_size: int, limit: int | None, frames_every: int, precision: str
) -> None:
    """ConfigError for settings that cannot run, before anything loads."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    if batch_size < 1 or (limit is not None and limit < 0) or frames_every < 0:
        raise ConfigError("generate: batch_size must be >= 1, limit and frames_every >= 0")
    check_precision(precision)


def read_examples(
    dataset_dir: str | Path,
    split: str,
    limit: int | None,
    only: Sequence[str] | None,
    frames_for: Sequence[str] | None,
    frames_every: int,
) -> SplitExamples:
    """The first ``limit`` examples of a split, those of them to draw (``only``) and those whose
    frames are kept; DataError naming a filename that is not among them."""
    info = read_dataset_info(dataset_dir)
    data = load_split(dataset_dir, split)
    count = len(data) if limit is None else min(limit, len(data))
    data = data.select(range(count))
    filenames = [_safe_name(str(f)) for f in data["filename"]]
    markups = [str(m) for m in data[info.markup_column]]
    if len(set(filenames)) != len(filenames):
        raise DataError(f"{dataset_dir} {split}: duplicate filenames")
    positions = list(range(count))
    if only is not None:
        unknown = sorted(set(only) - set(filenames))
        if unknown:
            raise DataError(
                f"--only names files not among the first {count} {split} examples of "
                f"{dataset_dir}: {unknown}"
            )
        keep = set(only)
        positions = [i for i, name in enumerate(filenames) if name in keep]
    drawn = [filenames[i] for i in positions]
    wanted_frames = set(drawn if frames_for is None else frames_for)
    missing = sorted(wanted_frames - set(drawn))
    if frames_every and missing:
        raise DataError(f"--frames-for names files not among the generated examples: {missing}")
    images = data.select_columns(["image"]).cast_column("image", _undecoded_image())
    where = f"{dataset_dir} {split}"
    return SplitExamples(info, images, filenames, markups, positions, wanted_frames, where)


def load_pipeline(
    model_dir: str | Path, device: str, *, channels_last: bool = False, tf32: bool = True
) -> Markup2ImPipeline:
    """The pipeline of the model in ``model_dir`` on ``device``, CUDA set up first."""
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        configure_cuda(tf32=tf32)
    model = Markup2ImModel.from_pretrained(model_dir, device=torch_device)
    return Markup2ImPipeline(model, channels_last=channels_last)


def check_sizes(
    model: Markup2ImModel, info: DatasetInfo, model_dir: str | Path, dataset_dir: str | Path
) -> None:
    """ConfigError when the model's images differ in size or colour from the dataset's."""
    if (model.width, model.height, model.channels) != (info.width, info.height, info.channels):
        raise ConfigError(
            f"model {model_dir} makes {model.width}x{model.height}x{model.channels} images but "
            f"dataset {dataset_dir} has {info.width}x{info.height}x{info.channels}"
        )


class FrameWriter:
    """Writes each frame of example ``k`` of a run to ``frames/<stem>/step_<NNNN>.png``."""

    def __init__(self, frames_dir: Path, filenames: Sequence[str]) -> None:
        self.frames_dir, self.filenames = frames_dir, filenames

    def __call__(self, number: int, step: int, frame: Image.Image) -> None:
        stem = Path(self.filenames[number]).stem
        save_image(frame, self.frames_dir / stem / f"step_{step:04d}.png")


def draw_examples(
    pipe: Markup2ImPipeline,
    examples: SplitExamples,
    dirs: OutputDirs,
    *,
    sampler: str,
    steps: int | None,
    seed: int,
    frames_every: int,
    batch_size: int,
    precision: str,
    eps_scale: EpsScale | None = None,
    guidance_scale: float | None = None,
) -> None:
    """Draw the examples batch by batch, writing frames as they come, then each batch's gold
    and drawn images."""
    drawn = examples.drawn
    with StepBar(f"generate {sampler}") as progress:
        batches = pipe.batches(
            [examples.markups[i] for i in examples.positions],
            sampler=sampler,
            steps=steps,
            seed=seed,
            indices=examples.positions,
            frames_every=frames_every,
            frames_for=[name in examples.frames_for for name in drawn],
            on_frame=FrameWriter(dirs.frames, drawn),
            batch_size=batch_size,
            progress=progress,
            precision=precision,
            eps_scale=eps_scale,
            guidance_scale=guidance_scale,
        )
        for batch in batches:
            write_batch(batch, examples, dirs)


def write_batch(batch: Drawing, examples: SplitExamples, dirs: OutputDirs) -> None:
    """Write the gold image and the drawn image of each example of ``batch``."""
    info = examples.info
    positions = examples.positions[batch.start : batch.start + len(batch.images)]
    for i, image in zip(positions, batch.images, strict=True):
        name = examples.filenames[i]
        gold = load_image(
            examples.images[i]["image"],
            channels=info.channels,
            size=(info.width, info.height),
            name=f"{examples.where} example {i} ({name})",
        )
        save_image(gold, dirs.gold / name)
        save_image(image, dirs.images / name)


def _safe_name(filename: str) -> str:
    """The dataset filename as a plain PNG name (no directories)."""
    name = Path(filename).name
    if not name or name in (".", ".."):
        raise DataError(f"invalid filename {filename!r} in dataset")
    return name if Path(name).suffix.lower() == ".png" else f"{name}.png"


def _undecoded_image() -> Any:
    import datasets

    return datasets.Image(decode=False)
