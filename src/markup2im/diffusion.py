"""Noise-schedule arithmetic of the DDPM forward process: the one source of truth.

Training (baseline and scheduled sampling) and the samplers' frame predictions all go through
:class:`NoiseSchedule`, whose cumulative products ``abar_t`` (``alphas_cumprod``) come from the
model's ``DDPMScheduler`` config, so the trainer and the samplers can never disagree about the
schedule (paper: 1000 steps, linear betas 1e-4 to 0.02, epsilon prediction).

With ``abar = abar_t`` for each example's timestep ``t``:

- forward process: ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``
- x0 from a noise prediction: ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``
- noise target from a noisy image and the gold x0: ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``

Arithmetic runs in float32 whatever the inputs' dtype (mixed precision) and the result is cast
back to the dtype of the first tensor argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDPMScheduler


class NoiseSchedule:
    """``abar_t`` for t = 0..T-1 and the closed forms of the forward process."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() == 0:
            raise ValueError("alphas_cumprod must be a non-empty 1-D tensor")
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float32).cpu()
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """The schedule of a ``DDPMScheduler`` built from ``config`` (a model's scheduler_config)."""
        scheduler = DDPMScheduler.from_config(dict(config))
        return cls(scheduler.alphas_cumprod)

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> NoiseSchedule:
        """The schedule of an existing diffusers scheduler (anything with ``alphas_cumprod``)."""
        return cls(torch.as_tensor(scheduler.alphas_cumprod))

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
