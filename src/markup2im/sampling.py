"""Sampling: DDPM (the paper's sampler), DDIM and DPM-Solver++ loops, per-example noise, frames.

- ``ddpm``: ancestral sampling over all T = 1000 steps, the x0 prediction clipped to [-1, 1] and
  the "fixed_small" posterior variance (the original's sampler).
- ``ddim``: deterministic DDIM (eta = 0), x0 clipped to [-1, 1], default 50 steps.
- ``dpmsolver++``: second-order multistep DPM-Solver++, x0 thresholded to [-1, 1] (dynamic
  thresholding with a maximum of 1, i.e. clipping; without it an untrained model's output is
  unbounded), default 20 steps.

Every example has its own CPU generator seeded from (seed, index of the example in its split)
(:func:`example_seed`) that draws its initial noise and each step's noise, so an image does not
depend on the batch size or its position in the batch (the original reseeded the same noise for
every batch). Frames are the clipped x0 predictions of every k-th step (step 0 = first denoising
step) plus the last step.

Classifier-free guidance (``guidance_scale`` w, :mod:`markup2im.guidance`) works with every sampler
and prediction type: each step runs the denoiser on the markup and on the empty markup and uses
``uncond + w (cond - uncond)``; w = 1 skips the second pass and is the plain sampler bit for bit.
Guidance comes first, then epsilon scaling.

Epsilon scaling (``eps_scale``, :mod:`markup2im.eps_scaling`) works with every sampler and
prediction type: each step's output has the noise it implies divided by ``lambda_t`` (the step's
training timestep t) before the frames and the scheduler step use it.

This module imports no model module: :func:`sample` is given a model (any
:class:`SamplingModel`) and calls its ``encode`` and its denoiser. Markup in, images out is
:mod:`markup2im.pipeline`, which calls :func:`sample`.

Speed options: ``precision="bf16"`` runs the denoiser under bf16 autocast (on CPU too; the
scheduler arithmetic and the returned samples stay fp32); ``channels_last`` stores the denoiser's
weights and feature maps channels-last (NHWC), which cuDNN's tensor-core convolutions prefer; on
CUDA :func:`markup2im.generate.generate` also enables TF32 and cuDNN autotuning (:func:`markup2im.cuda.configure_cuda`).

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
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from markup2im.diffusion import NoiseSchedule, plain_config
from markup2im.eps_scaling import EpsScale
from markup2im.errors import ConfigError
from markup2im.guidance import UNCONDITIONAL_MARKUP, check_guidance_scale, guide, guided
from markup2im.names import DEFAULT_STEPS, PRECISIONS, SAMPLERS

# the autocast dtype of each of names.PRECISIONS (None: plain fp32)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


class SamplingModel(Protocol):
    """What the loops need of a model (:class:`markup2im.model.Markup2ImModel` is one)."""

    scheduler_config: dict[str, Any]
    channels: int
    height: int
    width: int
    denoiser: torch.nn.Module

    def encode(self, markups: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __call__(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
    ) -> torch.Tensor: ...


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


def num_steps(
    sampler: str, scheduler_config: dict[str, Any], num_inference_steps: int | None = None
) -> int:
    """How many denoising steps ``sampler`` takes (``num_inference_steps`` or its default)."""
    return len(make_scheduler(sampler, scheduler_config, num_inference_steps).timesteps)


def example_seed(seed: int, index: int) -> int:
    """The noise seed of example ``index`` under ``seed`` (its index in a split, or in a list
    of markups drawn together): the one seeding rule of every drawing."""
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
    return AUTOCAST_DTYPES[precision]


def use_channels_last(model: SamplingModel) -> None:
    """Store the denoiser's 4-D weights channels-last (NHWC); outputs are unchanged."""
    model.denoiser.to(memory_format=torch.channels_last)


def frame_steps(num_steps: int, every: int) -> set[int]:
    """Step indices whose x0 prediction becomes a frame: every k-th from 0, plus the last."""
    if every <= 0:
        return set()
    return set(range(0, num_steps, every)) | {num_steps - 1}


def check_eps_scale(eps_scale: EpsScale | None, timesteps: torch.Tensor) -> EpsScale | None:
    """The epsilon scaling a loop applies (None: none, for None and the identity, so that
    ``eps_scale`` 1 skips the arithmetic and stays the plain sampler bit for bit); ConfigError
    when ``lambda_t`` is not positive at one of the sampler's (training) timesteps."""
    if eps_scale is None or eps_scale.identity:
        return None
    lowest = float(eps_scale.at(timesteps.to(torch.float64)).min())
    if not lowest > 0:
        raise ConfigError(
            f"eps_scale: lambda_t = {eps_scale.k:g} t + {eps_scale.b:g} must be > 0 at every "
            f"timestep of the sampler (it reaches {lowest:g})"
        )
    return eps_scale


class Conditioning:
    """One batch's markup states, and the empty markup's when the sampler guides: the
    denoiser's (guided) output for a step."""

    def __init__(
        self, model: SamplingModel, markups: Sequence[str], guidance_scale: float | None = None
    ) -> None:
        self.model = model
        self.hidden, self.mask = model.encode(list(markups))
        self.scale = None
        if guided(guidance_scale):
            self.scale = check_guidance_scale(guidance_scale)
            self.null_hidden, self.null_mask = model.encode([UNCONDITIONAL_MARKUP] * len(markups))

    def output(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The denoiser's output (fp32) for ``x`` at ``timesteps``, guided when asked for."""
        output = self.model(x, timesteps, self.hidden, self.mask).float()
        if self.scale is None:
            return output
        uncond = self.model(x, timesteps, self.null_hidden, self.null_mask).float()
        return guide(output, uncond, self.scale)


@torch.no_grad()
def sample(
    model: SamplingModel,
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
    eps_scale: EpsScale | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """Final samples (B, C, H, W) on the CPU for ``markups``, one generator per example.

    Each sampler ends on a clipped (or thresholded) x0 prediction, so values lie in [-1, 1].
    ``precision`` ``bf16`` runs the denoiser under bf16 autocast; ``channels_last`` feeds it
    NHWC samples (call :func:`use_channels_last` on the model once to convert its weights too).
    The noise, the scheduler steps and the result are fp32 either way. ``eps_scale`` (epsilon
    scaling, :mod:`markup2im.eps_scaling`) divides the noise of every step's output by
    ``lambda_t`` before the frames and the scheduler step see it; None or the identity is the
    plain sampler, bit for bit. ``guidance_scale`` w (classifier-free guidance,
    :mod:`markup2im.guidance`) comes before it; None or 1 is the plain sampler, bit for bit.
    """
    if len(generators) != len(markups):
        raise ValueError(f"{len(markups)} markups but {len(generators)} generators")
    autocast_dtype = check_precision(precision)
    scheduler = make_scheduler(sampler, model.scheduler_config, num_inference_steps)
    scaling = check_eps_scale(eps_scale, scheduler.timesteps)
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    device = next(model.denoiser.parameters()).device
    conditioning = Conditioning(model, markups, guidance_scale)
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
            output = conditioning.output(model_input, timesteps)
        output = output.contiguous()
        if scaling is not None:
            lambdas = scaling.at(timesteps.to(torch.float64))
            output = schedule.scale_noise(x, output, timesteps, lambdas)
        if step in keep and wanted:
            x0 = schedule.x0_from_output(x[wanted], output[wanted], timesteps[wanted])
            x0 = x0.clamp(-1, 1)
            for position, frame in zip(wanted, x0.cpu(), strict=True):
                on_frame(position, step, frame)
        x = scheduler.step(output, t, x, generator=list(generators)).prev_sample
        if on_step is not None:
            on_step()
    return x.cpu()
