"""The paper's method: the model rolls out m of its own denoising steps before the trained one.

The arithmetic (weights ramp, rollout, target) is :mod:`markup2im.scheduled_sampling`; this
module draws a step's randomness and builds its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from markup2im.diffusion import NoiseSchedule
from markup2im.scheduled_sampling import (
    EpsModel,
    ScheduledSamplingConfig,
    StepInputs,
    build_inputs,
    draw_timesteps_and_m,
)
from markup2im.training.config import TrainConfig


def draw_step(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    config: ScheduledSamplingConfig,
    x0: torch.Tensor,
    progress: float,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
    gamma: float = 0.0,
) -> StepInputs:
    """:func:`markup2im.scheduled_sampling.prepare_step`, with the noise drawn on the device.

    t and m come from ``generator`` on the CPU (m is needed on the host, and drawing them there
    needs no sync); the noise too when ``noise_generator`` is None, exactly as ``prepare_step``
    draws it (the CPU path), else from ``noise_generator`` on its device (a CUDA generator
    seeded like ``generator``: nothing is copied from the host). ``gamma`` > 0 perturbs the
    input (DDPM-IP): the forward process starts from ``noise + gamma xi`` with xi drawn last,
    from the same generator, so a resumed run draws it again bit for bit.
    """
    batch, device = x0.shape[0], x0.device
    timesteps, m = draw_timesteps_and_m(
        config, progress, batch, schedule.num_train_timesteps, generator
    )
    t_max = int(timesteps.max())  # on the CPU copy: no host sync
    if device.type == "cuda":
        timesteps = timesteps.pin_memory().to(device, non_blocking=True)
    else:
        timesteps = timesteps.to(device)
    noise = _randn(x0, generator, noise_generator)
    fresh = [_randn(x0, generator, noise_generator) for _ in range(m)]
    start = None
    if gamma:
        start = noise + gamma * _randn(x0, generator, noise_generator)
    return build_inputs(eps_model, schedule, x0, timesteps, m, noise, fresh, t_max, start)


def _randn(
    like: torch.Tensor, generator: torch.Generator, noise_generator: torch.Generator | None
) -> torch.Tensor:
    """Standard normal noise shaped like ``like``: from the CPU generator, or on the device."""
    if noise_generator is None:
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32)
        return noise.to(like.device, like.dtype)
    return torch.randn(
        like.shape, generator=noise_generator, dtype=torch.float32, device=like.device
    ).to(like.dtype)


@dataclass(frozen=True)
class ScheduledSampling:
    """Scheduled sampling with rollout weights ``weights`` (m = 0 is the plain DDPM step).

    ``gamma`` > 0 composes it with input perturbation: every step's forward process (the
    rollout's start for m > 0) takes ``noise + gamma xi``; the target of an m = 0 step is the
    unperturbed pair's, and of a rollout the one recomputed from the gold image, as always.
    """

    weights: ScheduledSamplingConfig
    gamma: float = 0.0

    @classmethod
    def from_config(cls, config: TrainConfig) -> ScheduledSampling:
        weights = ScheduledSamplingConfig.from_settings(
            max_m=config.ss_max_m, start=config.ss_start, end=config.ss_end, min_t=config.ss_min_t
        )
        return cls(weights, config.ip_gamma or 0.0)

    def inputs(
        self,
        eps_model: EpsModel,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        progress: float,
        generator: torch.Generator,
        noise_generator: torch.Generator | None = None,
    ) -> StepInputs:
        return draw_step(
            eps_model, schedule, self.weights, x0, progress, generator, noise_generator, self.gamma
        )

    def probability(self, progress: float) -> float:
        return self.weights.probability(progress)


METHOD = ScheduledSampling
