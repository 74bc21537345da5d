"""Noise-schedule arithmetic of the DDPM forward process: the one source of truth.

Training (baseline and scheduled sampling) and the samplers' frame predictions all go through
:class:`NoiseSchedule`, whose cumulative products ``abar_t`` (``alphas_cumprod``) come from the
model's ``DDPMScheduler`` config, so the trainer and the samplers can never disagree about the
schedule (paper: 1000 steps, linear betas 1e-4 to 0.02, epsilon prediction).

With ``abar = abar_t`` for each example's timestep ``t``:

- forward process: ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``
- x0 from a noise prediction: ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``
- noise target from a noisy image and the gold x0: ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``

The model's output is one of three parameterisations (``prediction_type`` of the scheduler config,
as in diffusers): ``epsilon`` (the noise; the paper's), ``v_prediction`` (``v = sqrt(abar) eps -
sqrt(1 - abar) x0``) or ``sample`` (x0 itself). :meth:`NoiseSchedule.x0_from_output` turns any of
them into an x0 estimate and :meth:`NoiseSchedule.target` gives the training target of a noisy
image and its gold x0 in the same parameterisation, so training, scheduled sampling and the
samplers' frames agree on what the model predicts.

Arithmetic runs in float32 whatever the inputs' dtype (mixed precision) and the result is cast
back to the dtype of the first tensor argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDPMScheduler

from markup2im.errors import ConfigError
from markup2im.names import PREDICTION_TYPES


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` or raise ConfigError listing the known ones."""
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"unknown prediction type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}"
        )
    return prediction_type


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler config as a plain dict, without diffusers' private bookkeeping.

    diffusers records which keys took their defaults (``_use_default_values``) and
    ``from_config`` ignores those keys, so a value set later (``prediction_type``) would be lost.
    """
    return {k: v for k, v in config.items() if k != "_use_default_values"}


class NoiseSchedule:
    """``abar_t`` for t = 0..T-1, the closed forms of the forward process and the model's
    output parameterisation."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() == 0:
            raise ValueError("alphas_cumprod must be a non-empty 1-D tensor")
        self.prediction_type = check_prediction_type(prediction_type)
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float32).cpu()
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """The schedule of a ``DDPMScheduler`` built from ``config`` (a model's scheduler_config)."""
        scheduler = DDPMScheduler.from_config(plain_config(config))
        return cls.from_scheduler(scheduler)

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> NoiseSchedule:
        """The schedule of an existing diffusers scheduler (anything with ``alphas_cumprod``)."""
        prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        return cls(torch.as_tensor(scheduler.alphas_cumprod), prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of diffusion steps; valid timesteps are 0..T-1."""
        return int(self.alphas_cumprod.numel())

    def abar(self, t: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """``abar_t`` for each entry of ``t`` (float32, on ``device`` or t's device)."""
        device = torch.device(device) if device is not None else t.device
        table = self._on_device.get(device)
        if table is None:
            table = self.alphas_cumprod.to(device)
            self._on_device[device] = table
        return table[t.to(device=device, dtype=torch.long)]

    def _coefficients(
        self, t: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) shaped to broadcast over a (B, ...) batch like ``like``."""
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"timesteps of shape {tuple(t.shape)} for a batch of {like.shape[0]}")
        abar = self.abar(t, like.device).reshape(-1, *([1] * (like.ndim - 1)))
        return abar.sqrt(), (1.0 - abar).sqrt()

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy images x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a, s = self._coefficients(t, x0)
        return (a * x0.float() + s * noise.float()).to(x0.dtype)

    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean image implied by a noise prediction (not clipped)."""
        a, s = self._coefficients(t, x_t)
        return ((x_t.float() - s * eps.float()) / a).to(x_t.dtype)

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that takes ``x0`` to ``x_t`` at step t (the epsilon target)."""
        a, s = self._coefficients(t, x_t)
        return ((x_t.float() - a * x0.float()) / s).to(x_t.dtype)

    def x0_from_output(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The clean image implied by a model output of this schedule's type (not clipped)."""
        if self.prediction_type == "epsilon":
            return self.x0_from_eps(x_t, output, t)
        if self.prediction_type == "sample":
            return output.to(x_t.dtype)
        a, s = self._coefficients(t, x_t)  # v: x0 = sqrt(abar) x_t - sqrt(1 - abar) v
        return (a * x_t.float() - s * output.float()).to(x_t.dtype)

    def target_from_noise(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The training target of ``q_sample(x0, noise, t)`` (the baseline step's target)."""
        if self.prediction_type == "epsilon":
            return noise.to(x0.dtype)
        if self.prediction_type == "sample":
            return x0
        a, s = self._coefficients(t, x0)  # v = sqrt(abar) eps - sqrt(1 - abar) x0
        return (a * noise.float() - s * x0.float()).to(x0.dtype)

    def target(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model should output for noisy ``x_t`` at step t whose gold image is ``x0``.

        The noise is the one implied by (x_t, x0), so the target of a rolled-out x_t (scheduled
        sampling) is recomputed from the gold image in the model's own parameterisation.
        """
        if self.prediction_type == "sample":
            return x0.to(x_t.dtype)
        eps = self.eps_from_x0(x_t, x0, t)
        if self.prediction_type == "epsilon":
            return eps
        a, s = self._coefficients(t, x_t)
        return (a * eps.float() - s * x0.float()).to(x_t.dtype)

    def scale_noise(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """The output with the noise it implies divided by ``scale`` (one value per example):
        epsilon scaling (Ning et al., ICLR 2024) in the model's own parameterisation.

        For an epsilon model that is ``output / scale``; for x0 and v models the implied noise
        is scaled and the output rebuilt from (x_t, the scaled noise), so every prediction type
        takes the same denoising direction.
        """
        scale = scale.to(x_t.device, torch.float32).reshape(-1, *([1] * (x_t.ndim - 1)))
        if self.prediction_type == "epsilon":
            return (output.float() / scale).to(output.dtype)
        eps = self.eps_from_x0(x_t, self.x0_from_output(x_t, output, t), t).float() / scale
        return self.target(x_t, self.x0_from_eps(x_t, eps, t), t).to(output.dtype)

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Per-example loss weights of min-SNR-gamma weighting (Hang et al., 2023), float32.

        With snr = abar / (1 - abar), the weight min(snr, gamma) / snr for an epsilon target,
        min(snr, gamma) / (snr + 1) for v and min(snr, gamma) for x0 makes every type weigh a
        timestep like an x0 loss capped at gamma, so the many easy low-noise steps no longer
        dominate.
        """
        abar = self.abar(t)
        snr = abar / (1.0 - abar)
        capped = snr.clamp(max=float(gamma))
        if self.prediction_type == "epsilon":
            return capped / snr
        if self.prediction_type == "v_prediction":
            return capped / (snr + 1.0)
        return capped
