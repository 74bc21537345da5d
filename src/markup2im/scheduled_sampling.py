"""Scheduled sampling for DDPM training (the paper's contribution); baseline = weights 0.

Each training step draws one rollout length m for the whole per-device batch. Weights over
m = 1..M ramp linearly from ``start`` to ``end`` with the training progress p = global_step /
total_steps (weight_m = start_m + p (end_m - start_m)); m = 0 gets 1 - sum. Then:

1. t ~ U{0..T-1} per example; while max(t) >= T - m, m decreases (so t + m <= T - 1).
2. Without gradients, the model rolls out m of its own denoising steps from x_{t+m} =
   q_sample(x0, noise, t + m): for tau = t+m, ..., t+1, x0_hat = the x0 implied by
   model(x_tau, tau) (not clipped) and x_{tau-1} = sqrt(abar_{tau-1}) x0_hat +
   sqrt(1 - abar_{tau-1}) * fresh noise.
3. The target on the rolled-out x_t is recomputed from the gold image:
   eps* = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t); loss = MSE(model(x_t, t), eps*).

For m = 0 the step is exactly the baseline step (x_t = q_sample(x0, noise, t), target = noise).
The paper predicts the noise; for a model predicting v or x0 (the schedule's ``prediction_type``)
the rollout reads x0_hat from that output and the target is the same (x_t, x0) pair expressed in
that parameterisation (v* = sqrt(abar_t) eps* - sqrt(1 - abar_t) x0, or x0 itself), see
:meth:`markup2im.diffusion.NoiseSchedule.target`.
All randomness of a step comes from one ``torch.Generator`` the caller seeds, drawn on the CPU and
moved to the data's device, so a step is reproducible on any device and independent of the global
RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from markup2im.diffusion import NoiseSchedule
from markup2im.errors import ConfigError

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""The denoiser ``(x_t, t) -> output`` with the conditioning already bound; the output is the
noise, v or x0 as the schedule's ``prediction_type`` says."""

DEFAULT_END: tuple[float, ...] = (0.8,)  # paper: P(m = 1) ramps 0 -> 0.8 with M = 1


@dataclass(frozen=True)
class ScheduledSamplingConfig:
    """Rollout weights for m = 1..M at the start and end of training, and the small-t guard.

    ``min_t``: when set, a step whose smallest timestep is <= min_t trains with m = 0.
    """

    max_m: int = 1
    start: tuple[float, ...] = (0.0,)
    end: tuple[float, ...] = DEFAULT_END
    min_t: int | None = None

    def __post_init__(self) -> None:
        if self.max_m < 1:
            raise ConfigError(f"scheduled sampling: max m must be >= 1, got {self.max_m}")
        for label, weights in (("start", self.start), ("end", self.end)):
            if len(weights) != self.max_m:
                raise ConfigError(
                    f"scheduled sampling: {label} weights {list(weights)} must have one value per "
                    f"m = 1..{self.max_m}"
                )
            if any(not math.isfinite(w) or w < 0 or w > 1 for w in weights):
                raise ConfigError(
                    f"scheduled sampling: {label} weights {list(weights)} must lie in [0, 1]"
                )
            if sum(weights) > 1 + 1e-9:
                raise ConfigError(
                    f"scheduled sampling: {label} weights {list(weights)} sum to more than 1"
                )
        if self.min_t is not None and self.min_t < 0:
            raise ConfigError(f"scheduled sampling: min t must be >= 0, got {self.min_t}")

    @classmethod
    def baseline(cls, max_m: int = 1) -> ScheduledSamplingConfig:
        """Plain DDPM training: every weight is 0, so m is always 0."""
        return cls(max_m=max_m, start=(0.0,) * max_m, end=(0.0,) * max_m)

    @classmethod
    def from_settings(
        cls,
        *,
        max_m: int = 1,
        start: Sequence[float] | None = None,
        end: Sequence[float] | None = None,
        min_t: int | None = None,
    ) -> ScheduledSamplingConfig:
        """The weights of the scheduled_sampling method; unset ones take the paper's defaults."""
        if end is None:
            if max_m != 1:
                raise ConfigError(
                    f"scheduled sampling with max m {max_m}: give {max_m} end weights"
                )
            end = DEFAULT_END
        if start is None:
            start = (0.0,) * len(end)
        # min_t 0 means no guard, as in the workflow config: a guard at t <= 0 would only skip
        # the batches that happen to hold a t = 0 (1.6% of steps at batch 16), which no one wants
        return cls(max_m=max_m, start=tuple(start), end=tuple(end), min_t=min_t or None)

    def weights(self, progress: float) -> tuple[float, ...]:
        """Probabilities of m = 0..M at training progress p in [0, 1]."""
        p = min(max(float(progress), 0.0), 1.0)
        rollout = [s + p * (e - s) for s, e in zip(self.start, self.end, strict=True)]
        return (max(0.0, 1.0 - sum(rollout)), *rollout)

    def probability(self, progress: float) -> float:
        """P(m >= 1) at training progress p (the logged ``ss_prob``)."""
        return float(sum(self.weights(progress)[1:]))


@dataclass
class StepInputs:
    """What the trained forward pass sees: noisy images, timesteps, target, used m."""

    x_t: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    m: int


def draw_m(weights: Sequence[float], generator: torch.Generator) -> int:
    """Draw m with probabilities ``weights`` (index = m) using one uniform from ``generator``."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    total = 0.0
    for m, weight in enumerate(weights):
        total += weight
        if u < total:
            return m
    return max(m for m, weight in enumerate(weights) if weight > 0) if any(weights) else 0


def clamp_m(m: int, timesteps: torch.Tensor, num_train_timesteps: int) -> int:
    """Largest m' <= m with max(t) + m' <= T - 1 (a rollout cannot start beyond the last step)."""
    t_max = int(timesteps.max())
    while m > 0 and t_max >= num_train_timesteps - m:
        m -= 1
    return m


def usable_m(
    config: ScheduledSamplingConfig, m: int, timesteps: torch.Tensor, num_train_timesteps: int
) -> int:
    """The drawn m after the schedule's end (:func:`clamp_m`) and the small-t guard."""
    m = clamp_m(m, timesteps, num_train_timesteps)
    # The guard: the error of the rolled-out x_t enters eps* multiplied by sqrt(abar_t) /
    # sqrt(1 - abar_t) (about 100 at t = 0, 6 at t = 50), so rollouts ending at small t give
    # huge, noisy targets; an earlier version of the original skipped them when min(t) <= 50.
    if m > 0 and config.min_t is not None and int(timesteps.min()) <= config.min_t:
        m = 0
    return m


def draw_timesteps_and_m(
    config: ScheduledSamplingConfig,
    progress: float,
    batch: int,
    num_train_timesteps: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, int]:
    """The first draws of a step: t per example (on the CPU) and the usable m.

    Needs no model, so a run's logged m can be replayed from its seeds.
    """
    timesteps = torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    m = draw_m(config.weights(progress), generator)
    return timesteps, usable_m(config, m, timesteps, num_train_timesteps)


def build_inputs(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    m: int,
    noise: torch.Tensor,
    fresh_noise: Sequence[torch.Tensor] = (),
    t_max: int | None = None,
    input_noise: torch.Tensor | None = None,
) -> StepInputs:
    """The training inputs for given randomness: baseline for m = 0, an m-step rollout otherwise.

    ``fresh_noise`` holds the m noise tensors of the rollout steps, in order. ``t_max``, the
    largest timestep, spares reading it back from a GPU (a host sync) when the caller drew the
    timesteps on the CPU and knows it. ``input_noise`` (default ``noise``) is the noise of the
    forward process that makes the input (input perturbation: ``noise + gamma xi``); for
    m = 0 the target stays that of the unperturbed pair (x0, noise).
    """
    start_noise = noise if input_noise is None else input_noise
    if m == 0:
        x_t = schedule.q_sample(x0, start_noise, timesteps)
        return StepInputs(x_t, timesteps, schedule.target_from_noise(x0, noise, timesteps), 0)
    if len(fresh_noise) != m:
        raise ValueError(
            f"rollout of {m} steps needs {m} fresh noise tensors, got {len(fresh_noise)}"
        )
    if t_max is None:
        t_max = int(timesteps.max())
    if t_max + m > schedule.num_train_timesteps - 1:
        raise ValueError(f"rollout of {m} steps from t = {t_max} leaves the schedule")
    with torch.no_grad():
        tau = timesteps + m
        x_tau = schedule.q_sample(x0, start_noise, tau)
        for step_noise in fresh_noise:
            output = eps_model(x_tau, tau).to(x_tau.dtype)
            x0_hat = schedule.x0_from_output(x_tau, output, tau)
            tau = tau - 1
            x_tau = schedule.q_sample(x0_hat, step_noise, tau)
        x_t = x_tau.detach()
    target = schedule.target(x_t, x0, timesteps)
    return StepInputs(x_t, timesteps, target.detach(), m)


def prepare_step(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    config: ScheduledSamplingConfig,
    x0: torch.Tensor,
    progress: float,
    generator: torch.Generator,
) -> StepInputs:
    """Draw t, m and the noise of one step from ``generator`` and build its training inputs."""
    batch, device = x0.shape[0], x0.device
    T = schedule.num_train_timesteps
    timesteps, m = draw_timesteps_and_m(config, progress, batch, T, generator)
    t_max = int(timesteps.max())  # on the CPU copy: no host sync
    timesteps = timesteps.to(device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device, x0.dtype)
    fresh = [
        torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device, x0.dtype)
        for _ in range(m)
    ]
    return build_inputs(eps_model, schedule, x0, timesteps, m, noise, fresh, t_max)


def step_loss(
    eps_model: EpsModel, inputs: StepInputs, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE over all elements between the model's output and the target (float32).

    ``weights`` (one per example, e.g. min-SNR) weigh each example's mean squared error; without
    them every element counts the same (the paper's loss).
    """
    prediction = eps_model(inputs.x_t, inputs.timesteps)
    if weights is None:
        return F.mse_loss(prediction.float(), inputs.target.float())
    per_example = (prediction.float() - inputs.target.float()).pow(2).flatten(1).mean(1)
    return (per_example * weights.to(per_example.device, torch.float32)).mean()
