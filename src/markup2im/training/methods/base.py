"""The interface of a training method."""

from __future__ import annotations

from typing import Protocol

import torch

from markup2im.diffusion import NoiseSchedule
from markup2im.scheduled_sampling import EpsModel, StepInputs
from markup2im.training.config import TrainConfig


class TrainingMethod(Protocol):
    """Decides what one training step feeds the model (x_t, t) and what it must output."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> TrainingMethod:
        """The method with the settings of ``config`` (ConfigError for ones it cannot use)."""
        ...

    def inputs(
        self,
        eps_model: EpsModel,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        progress: float,
        generator: torch.Generator,
        noise_generator: torch.Generator | None = None,
    ) -> StepInputs:
        """The step's inputs and target for clean images ``x0`` at training progress in [0, 1].

        All randomness comes from ``generator`` (CPU), or for the noise from
        ``noise_generator`` on the data's device when given.
        """
        ...

    def probability(self, progress: float) -> float:
        """The share of steps that differ from plain DDPM training (the logged ``ss_prob``)."""
        ...
