"""Markup in, images (and frames) out: the one path that ``draw``, the demo and ``generate`` share.

::

    from markup2im.pipeline import Markup2ImPipeline

    pipe = Markup2ImPipeline.from_pretrained("results/math/scheduled_sampling/train/model")
    drawing = pipe([r"x^2+3-y_1=n", r"\\frac{1}{y}"], sampler="ddim", steps=10, seed=0)
    drawing.images[0].save("out.png")

The seeding rule, the only one: the image of example ``index`` under ``seed`` comes from the noise
of :func:`markup2im.sampling.example_seed` ``(seed, index)``. Markup ``k`` of a call is example
``indices[k]`` (default: ``k``) under ``seed``, so an example gets the same noise drawn alone
(``indices=[k]``), in a batch, or in a split by ``markup2im generate`` (where the index is the
example's in the split), and on the CPU in fp32 the same image up to the denoiser's batch
invariance (1e-5 before rounding to pixels; see :mod:`markup2im.sampling`). One markup drawn with
seed ``s`` is example 0 of ``s``; markup ``i`` of a list drawn with seed ``s`` is example ``i`` of
``s``. ``seed`` may also give one seed per markup (``markup2im draw --markup-file`` draws line
``i`` as example 0 of ``seed + i``, the image of a single draw with that seed).

Layers: :mod:`markup2im.model` (the saved model) <- :mod:`markup2im.sampling` (the loops) <- this
module <- the jobs (:mod:`markup2im.generate`, :mod:`markup2im.drawing`, :mod:`markup2im.demo`)
<- :mod:`markup2im.cli`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from PIL import Image

from markup2im.eps_scaling import EpsScaleLike, parse_eps_scale
from markup2im.errors import ConfigError
from markup2im.guidance import guided, parse_guidance_scale
from markup2im.images import tensor_to_image
from markup2im.model import Markup2ImModel
from markup2im.sampling import (
    check_precision,
    example_seed,
    frame_steps,
    num_steps,
    sample,
    use_channels_last,
)

Progress = Callable[[int, int], None]
"""Called with (denoising steps done, steps in all) after every step of a call."""

FrameSink = Callable[[int, int, Image.Image], None]
"""Called with (markup number in the call, step index, frame) as each frame is made."""

logger = logging.getLogger(__name__)


@dataclass
class Drawing:
    """What a call (or one batch of it) drew."""

    images: list[Image.Image] = field(default_factory=list)  # one per markup
    # per markup, the clipped x0 prediction of each step of ``frame_steps`` ([] without frames,
    # for markups that ``frames_for`` leaves out, and when an ``on_frame`` sink took them)
    frames: list[list[Image.Image]] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)  # denoising steps of the frames, from 0
    start: int = 0  # the number in the call of the first markup drawn here


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


class Markup2ImPipeline:
    """A model and the one way of drawing markup with it."""

    def __init__(self, model: Markup2ImModel, *, channels_last: bool = False) -> None:
        """``channels_last`` stores the denoiser's weights NHWC and feeds it NHWC samples (GPUs:
        faster; the same images to 1e-4)."""
        self.model = model
        self.channels_last = channels_last
        if channels_last:
            use_channels_last(model)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        channels_last: bool = False,
    ) -> Markup2ImPipeline:
        """The pipeline of a saved model directory on ``device`` (auto: CUDA when available)."""
        model = Markup2ImModel.from_pretrained(directory, device=resolve_device(device))
        return cls(model, channels_last=channels_last)

    def num_steps(self, sampler: str, steps: int | None = None) -> int:
        """Denoising steps of ``sampler`` with ``steps`` (None: the sampler's default)."""
        return num_steps(sampler, self.model.scheduler_config, steps)

    def __call__(self, markups: str | Sequence[str], **settings: Any) -> Drawing:
        """Draw ``markups`` (one string or a list) with the keyword settings of :meth:`batches`,
        all batches at once."""
        drawn = Drawing()
        for batch in self.batches(markups, **settings):
            drawn.images += batch.images
            drawn.frames += batch.frames
            drawn.frame_steps = batch.frame_steps
        return drawn

    def batches(
        self,
        markups: str | Sequence[str],
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        seed: int | Sequence[int] = 0,
        indices: Sequence[int] | None = None,
        frames_every: int = 0,
        frames_for: Sequence[bool] | None = None,
        on_frame: FrameSink | None = None,
        batch_size: int = 16,
        progress: Progress | None = None,
        precision: str = "fp32",
        eps_scale: EpsScaleLike = None,
        guidance_scale: float | None = None,
    ) -> Iterator[Drawing]:
        """Draw ``markups`` (one string or a list) at the model's size and colour mode, one batch
        of ``batch_size`` markups at a time (each Drawing's ``start`` says where in ``markups``):
        for jobs that write files as they go; :meth:`__call__` joins the batches.

        ``sampler`` is ddpm, ddim or dpmsolver++, ``steps`` its number of denoising steps (None:
        the sampler's default). Markup ``k`` is example ``indices[k]`` (default ``k``) of
        ``seed`` (or of ``seed[k]``, one seed per markup): the module docstring's seeding rule,
        whatever ``batch_size`` (markups sampled together). ``frames_every`` k > 0 also keeps
        each markup's denoising frames (the clipped x0 prediction of every k-th step and of the
        last step), of the markups that ``frames_for`` marks (default: all); ``on_frame`` takes
        them as they come instead of the result keeping them. ``progress`` is called with
        (steps done, steps in all) after every step. Markup longer than the model's limit is
        truncated (the encoder logs by how many tokens). ``precision`` ``bf16`` runs the
        denoiser under bf16 autocast (close to but not bit-identical with fp32). ``eps_scale``
        is epsilon scaling (:mod:`markup2im.eps_scaling`): 1.01, ``{"k": ..., "b": ...}`` or
        ``"k=...,b=..."`` divides the predicted noise by ``lambda_t = k t + b``; None or 1 is
        the plain sampler. ``guidance_scale`` w is classifier-free guidance
        (:mod:`markup2im.guidance`, for models trained with markup dropout): None or 1 is the
        plain sampler.
        """
        # 1. the markups, each one's noise, and the settings
        items = [markups] if isinstance(markups, str) else [str(m) for m in markups]
        noise = _noise_seeds(len(items), seed, indices)
        if batch_size < 1 or frames_every < 0:
            raise ConfigError(
                f"batch_size must be >= 1 and frames_every >= 0, got {batch_size}, {frames_every}"
            )
        check_precision(precision)
        scaling = parse_eps_scale(eps_scale)
        guidance_scale = _guidance(self.model, guidance_scale)
        per_batch = self.num_steps(sampler, steps)
        kept_steps = sorted(frame_steps(per_batch, frames_every))
        wanted = [True] * len(items) if frames_for is None else list(frames_for)
        if len(wanted) != len(items):
            raise ConfigError(f"{len(items)} markups but frames_for has {len(wanted)} entries")
        counter = _StepCounter(progress, per_batch * math.ceil(len(items) / batch_size))
        # 2. batch by batch in eval mode, the model's mode restored at the end
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(items), batch_size):
                batch = slice(start, start + batch_size)
                frames = _Frames(start, len(items[batch]), on_frame)
                result = sample(
                    self.model,
                    items[batch],
                    [torch.Generator().manual_seed(s) for s in noise[batch]],
                    sampler=sampler,
                    num_inference_steps=steps,
                    frames_every=frames_every,
                    frames_for=wanted[batch],
                    on_frame=frames if frames_every else None,
                    on_step=counter,
                    precision=precision,
                    channels_last=self.channels_last,
                    eps_scale=scaling,
                    guidance_scale=guidance_scale,
                )
                images = [tensor_to_image(x) for x in result]
                yield Drawing(images, frames.kept, kept_steps, start)
        finally:
            self.model.train(was_training)


def _guidance(model: Markup2ImModel, scale: float | None) -> float | None:
    """The checked guidance scale (None: none); a warning when it guides a model that never saw
    the empty markup in training (its unconditional output is then untrained)."""
    scale = parse_guidance_scale(scale)
    if guided(scale) and not model.markup_dropout:
        logger.warning(
            "guidance scale %g on a model trained without markup dropout: its output for the "
            "empty markup was never trained, so guidance pushes away from an untrained guess",
            scale,
        )
    return scale


def _noise_seeds(count: int, seed: int | Sequence[int], indices: Sequence[int] | None) -> list[int]:
    """The noise seed of each of ``count`` markups: example_seed(its seed, its index)."""
    seeds = list(seed) if isinstance(seed, Sequence) else [seed] * count
    positions = list(range(count)) if indices is None else list(indices)
    if len(seeds) != count or len(positions) != count:
        raise ConfigError(f"{count} markups but {len(seeds)} seeds and {len(positions)} indices")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {s!r}")
    return [example_seed(int(s), int(i)) for s, i in zip(seeds, positions, strict=True)]


class _StepCounter:
    """Counts denoising steps across a call's batches and reports them to a Progress."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


class _Frames:
    """The frames of one batch as images: kept per markup, or passed on to a sink."""

    def __init__(self, start: int, count: int, sink: FrameSink | None) -> None:
        self.start, self.sink = start, sink
        self.kept: list[list[Image.Image]] = [[] for _ in range(count)]

    def __call__(self, position: int, step: int, frame: torch.Tensor) -> None:
        image = tensor_to_image(frame)
        if self.sink is None:
            self.kept[position].append(image)
        else:
            self.sink(self.start + position, step, image)


class StepBar:
    """A tqdm bar over denoising steps on stderr, as a :data:`Progress` callback."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None  # made at the first step, when the total is known

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> StepBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
