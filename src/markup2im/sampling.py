"""Sampling: DDPM (the paper's sampler), DDIM and DPM-Solver++ loops, per-example noise, frames.

- ``ddpm``: ancestral sampling over all T = 1000 steps, the x0 prediction clipped to [-1, 1] and
  the "fixed_small" posterior variance (the original's sampler).
- ``ddim``: deterministic DDIM (eta = 0), x0 clipped to [-1, 1], default 50 steps.
- ``dpmsolver++``: second-order multistep DPM-Solver++, x0 thresholded to [-1, 1] (dynamic
  thresholding with a maximum of 1, i.e. clipping; without it an untrained model's output is
  unbounded), default 20 steps.

Every example has its own CPU generator seeded from (seed, index of the example in its split) that
draws its initial noise and each step's noise, so an image does not depend on the batch size or
its position in the batch (the original reseeded the same noise for every batch). Frames are the
clipped x0 predictions of every k-th step (step 0 = first denoising step) plus the last step.

Speed options: ``precision="bf16"`` runs the denoiser under bf16 autocast (on CPU too; the
scheduler arithmetic and the returned samples stay fp32); ``channels_last`` stores the denoiser's
weights and feature maps channels-last (NHWC), which cuDNN's tensor-core convolutions prefer; on
CUDA ``generate`` also enables TF32 and cuDNN autotuning (:func:`markup2im.cuda.configure_cuda`).

What batch invariance holds:

* CPU, fp32: an image does not depend on the batch it was drawn in to 1e-5 (tests/test_sampling.py),
  and a run repeats bit for bit.
* CUDA: the noise is still each example's own, but the arithmetic is not bit-identical across batch
  sizes: cuDNN picks convolution algorithms per shape (``cudnn.benchmark`` times them per shape),
  scaled-dot-product attention picks flash / memory-efficient / math kernels per shape, and TF32
  rounds matmul inputs to 10 mantissa bits (bf16 to 8), so summation orders and roundings differ
  and pixels are not bit-identical. What is promised, and checked by the GPU tests
  (tests/test_gpu_sampling.py): one denoiser pass of an example alone and inside a batch agrees
  within 1e-4 (fp32, TF32 off), 1e-2 (TF32) and 5e-2 (bf16) of the output's RMS; whole DDIM runs
  within a mean absolute pixel difference of 1e-2 (TF32) and 5e-2 (bf16) on the [-1, 1] scale.
  These bounds come from the mantissa widths with a margin; no GPU run has measured them yet.
* bf16 against fp32 (CPU, the trained tiny test model, same seeds): images differ by a mean
  absolute 0.001 and at most 0.009 on the [-1, 1] scale for every sampler (tested within 0.01 and
  0.1, tests/test_sampling.py); bf16 is a speed option, not a bitwise one. An untrained model's
  samples are chaotic in their inputs, so there the two differ far more.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from markup2im.atomic import save_image
from markup2im.cuda import configure_cuda
from markup2im.data.datasets import load_split, read_dataset_info
from markup2im.diffusion import NoiseSchedule, plain_config
from markup2im.errors import ConfigError, DataError
from markup2im.images import load_image, tensor_to_image

logger = logging.getLogger(__name__)

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmsolver++")
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
DEFAULT_STEPS: dict[str, int | None] = {"ddpm": None, "ddim": 50, "dpmsolver++": 20}

FrameCallback = Callable[[int, int, torch.Tensor], None]
"""Called with (position in the batch, step index, clipped x0 prediction (C, H, W) on the CPU)."""


def make_scheduler(
    sampler: str, scheduler_config: dict[str, Any], num_inference_steps: int | None = None
) -> Any:
    """A diffusers scheduler for ``sampler`` built from the model's DDPM config, timesteps set."""
    config = plain_config(scheduler_config)
    if sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(
            config,
            clip_sample=True,
            clip_sample_range=1.0,
            variance_type="fixed_small",
            thresholding=False,
        )
    elif sampler == "ddim":
        scheduler = DDIMScheduler.from_config(
            config,
            clip_sample=True,
            clip_sample_range=1.0,
            set_alpha_to_one=True,
            thresholding=False,
        )
    elif sampler == "dpmsolver++":
        scheduler = DPMSolverMultistepScheduler.from_config(
            config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=True,
            sample_max_value=1.0,
            dynamic_thresholding_ratio=0.995,
            lower_order_final=True,
        )
    else:
        raise ConfigError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    steps = num_inference_steps
    if steps is None:  # 0 is an error below, not "the default"
        steps = DEFAULT_STEPS[sampler] or scheduler.config.num_train_timesteps
    if not 1 <= steps <= scheduler.config.num_train_timesteps:
        raise ConfigError(
            f"num_inference_steps must lie in 1..{scheduler.config.num_train_timesteps}, got {steps}"
        )
    scheduler.set_timesteps(steps)
    return scheduler


def example_seed(seed: int, index: int) -> int:
    """The noise seed of the example at ``index`` of its split."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


def example_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One seeded CPU generator per example."""
    return [torch.Generator().manual_seed(example_seed(seed, i)) for i in indices]


def check_precision(precision: str) -> torch.dtype | None:
    """The autocast dtype of a sampling precision (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {precision!r}; known precisions: {', '.join(PRECISIONS)}"
        )
    return PRECISIONS[precision]


def use_channels_last(model: Any) -> None:
    """Store the denoiser's 4-D weights channels-last (NHWC); outputs are unchanged."""
    model.denoiser.to(memory_format=torch.channels_last)


def frame_steps(num_steps: int, every: int) -> set[int]:
    """Step indices whose x0 prediction becomes a frame: every k-th from 0, plus the last."""
    if every <= 0:
        return set()
    return set(range(0, num_steps, every)) | {num_steps - 1}


@torch.no_grad()
def sample(
    model: Any,
    markups: Sequence[str],
    generators: Sequence[torch.Generator],
    *,
    sampler: str = "ddpm",
    num_inference_steps: int | None = None,
    frames_every: int = 0,
    frames_for: Sequence[bool] | None = None,
    on_frame: FrameCallback | None = None,
    on_step: Callable[[], None] | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> torch.Tensor:
    """Final samples (B, C, H, W) on the CPU for ``markups``, one generator per example.

    Each sampler ends on a clipped (or thresholded) x0 prediction, so values lie in [-1, 1].
    ``precision`` ``bf16`` runs the denoiser under bf16 autocast; ``channels_last`` feeds it
    NHWC samples (call :func:`use_channels_last` on the model once to convert its weights too).
    The noise, the scheduler steps and the result are fp32 either way.
    """
    if len(generators) != len(markups):
        raise ValueError(f"{len(markups)} markups but {len(generators)} generators")
    autocast_dtype = check_precision(precision)
    scheduler = make_scheduler(sampler, model.scheduler_config, num_inference_steps)
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    device = next(model.denoiser.parameters()).device
    hidden, mask = model.encode(list(markups))
    shape = (len(markups), model.channels, model.height, model.width)
    x = randn_tensor(shape, generator=list(generators), device=device, dtype=torch.float32)
    x = x * scheduler.init_noise_sigma
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    keep = frame_steps(len(scheduler.timesteps), frames_every) if on_frame else set()
    wanted = [i for i, w in enumerate(frames_for or [True] * len(markups)) if w]
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    for step, t in enumerate(scheduler.timesteps):
        timesteps = torch.full((len(markups),), int(t), device=device, dtype=torch.long)
        model_input = scheduler.scale_model_input(x, t).contiguous(memory_format=memory_format)
        with autocast:
            output = model(model_input, timesteps, hidden, mask)
        output = output.float().contiguous()
        if step in keep and wanted:
            x0 = schedule.x0_from_output(x[wanted], output[wanted], timesteps[wanted])
            x0 = x0.clamp(-1, 1)
            for position, frame in zip(wanted, x0.cpu(), strict=True):
                on_frame(position, step, frame)
        x = scheduler.step(output, t, x, generator=list(generators)).prev_sample
        if on_step is not None:
            on_step()
    return x.cpu()


@dataclass
class GenerateResult:
    """What ``generate`` wrote."""

    count: int
    images_dir: Path
    gold_dir: Path
    frames_dir: Path
    seconds: float


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


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
) -> GenerateResult:
    """Generate the first ``limit`` examples of a split: images, gold images and frames.

    ``only`` restricts the run to the examples of those filenames (among the first ``limit``).
    Each example keeps the noise of its index in the split, so its image is the one a full run
    makes: the workflow draws the denoising frames of a few examples in a job of their own.

    Writes output_dir/images/<filename>, output_dir/gold/<filename> and, with ``frames_every``,
    output_dir/frames/<stem>/step_<NNNN>.png for the examples named in ``frames_for`` (all
    generated examples when it is not given). Those three directories are emptied first, once
    the model and data have loaded, so that images of an earlier run never mix with these.

    ``precision`` (fp32, bf16) and ``channels_last`` are :func:`sample`'s speed options; on CUDA
    TF32 matmuls and cuDNN autotuning are enabled unless ``tf32`` is false (what batch invariance
    holds then: the module docstring).
    """
    from tqdm.auto import tqdm

    from markup2im.pipeline import Markup2ImModel

    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    if batch_size < 1 or (limit is not None and limit < 0) or frames_every < 0:
        raise ConfigError("generate: batch_size must be >= 1, limit and frames_every >= 0")
    check_precision(precision)
    started = time.perf_counter()
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output directory {out} is a file")
    images_dir, gold_dir, frames_dir = out / "images", out / "gold", out / "frames"
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
    filenames_kept = [filenames[i] for i in positions]
    wanted_frames = set(filenames_kept if frames_for is None else frames_for)
    missing = sorted(wanted_frames - set(filenames_kept))
    if frames_every and missing:
        raise DataError(f"--frames-for names files not among the generated examples: {missing}")

    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        configure_cuda(tf32=tf32)
    model = Markup2ImModel.from_pretrained(model_dir, device=torch_device)
    model.eval()
    if channels_last:
        use_channels_last(model)
    if (model.width, model.height, model.channels) != (info.width, info.height, info.channels):
        raise ConfigError(
            f"model {model_dir} makes {model.width}x{model.height}x{model.channels} images but "
            f"dataset {dataset_dir} has {info.width}x{info.height}x{info.channels}"
        )
    images = data.select_columns(["image"]).cast_column("image", _undecoded_image())
    steps = len(make_scheduler(sampler, model.scheduler_config, num_inference_steps).timesteps)
    for stale in (images_dir, gold_dir, frames_dir):
        if stale.is_dir():
            logger.info("removing the earlier %s", stale)
            shutil.rmtree(stale)
        elif stale.exists():
            raise DataError(f"{stale} is a file; generate writes a directory there")
    logger.info(
        "generating %d %s images with %s (%d steps) on %s, batch %d, %s%s",
        len(positions),
        split,
        sampler,
        steps,
        torch_device,
        batch_size,
        precision,
        ", channels-last" if channels_last else "",
    )
    total = math.ceil(len(positions) / batch_size) * steps
    progress = tqdm(total=total, desc=f"generate {sampler}", unit="step")
    try:
        for start in range(0, len(positions), batch_size):
            indices = positions[start : start + batch_size]
            names = [filenames[i] for i in indices]
            for i, name in zip(indices, names, strict=True):
                gold = load_image(
                    images[i]["image"],
                    channels=info.channels,
                    size=(info.width, info.height),
                    name=f"{dataset_dir} {split} example {i} ({name})",
                )
                save_image(gold, gold_dir / name)

            def write_frame(position: int, step: int, frame: torch.Tensor) -> None:
                stem = Path(names[position]).stem  # noqa: B023
                save_image(tensor_to_image(frame), frames_dir / stem / f"step_{step:04d}.png")

            result = sample(
                model,
                [markups[i] for i in indices],
                example_generators(seed, indices),
                sampler=sampler,
                num_inference_steps=num_inference_steps,
                frames_every=frames_every,
                frames_for=[n in wanted_frames for n in names],
                on_frame=write_frame if frames_every else None,
                on_step=lambda: progress.update(1),
                precision=precision,
                channels_last=channels_last,
            )
            for name, image in zip(names, result, strict=True):
                save_image(tensor_to_image(image), images_dir / name)
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    logger.info("wrote %d images to %s in %.1f s", len(positions), images_dir, seconds)
    return GenerateResult(len(positions), images_dir, gold_dir, frames_dir, seconds)


def _safe_name(filename: str) -> str:
    """The dataset filename as a plain PNG name (no directories)."""
    name = Path(filename).name
    if not name or name in (".", ".."):
        raise DataError(f"invalid filename {filename!r} in dataset")
    return name if Path(name).suffix.lower() == ".png" else f"{name}.png"


def _undecoded_image() -> Any:
    import datasets

    return datasets.Image(decode=False)
