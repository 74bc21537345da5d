"""Input perturbation (DDPM-IP, Ning et al., ICML 2023): the baseline step with a perturbed input.

The model sees ``q_sample(x0, eps + gamma xi, t)`` with fresh ``xi ~ N(0, I)`` while its target
stays the unperturbed pair's (``eps`` for an epsilon model; for x0 or v models the target of
``(x0, eps)``). ``gamma`` is 0.1 in the paper; it costs no extra forward pass. Like the baseline
it draws t, the (always 0) rollout length and the noise exactly as the other methods do, then xi.
"""

from __future__ import annotations

from markup2im.errors import ConfigError
from markup2im.names import INPUT_PERTURBATION_GAMMA
from markup2im.scheduled_sampling import ScheduledSamplingConfig
from markup2im.training.config import TrainConfig
from markup2im.training.methods.scheduled_sampling import ScheduledSampling


class InputPerturbation(ScheduledSampling):
    """Rollout weights 0 and ``gamma`` > 0."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> InputPerturbation:
        given = [w for w in (*(config.ss_start or ()), *(config.ss_end or ())) if w != 0]
        if given:
            raise ConfigError(
                "method input_perturbation trains without scheduled sampling; drop --ss-start/"
                "--ss-end, or use --method scheduled_sampling with --ip-gamma to combine them"
            )
        gamma = INPUT_PERTURBATION_GAMMA if config.ip_gamma is None else config.ip_gamma
        if gamma == 0:
            raise ConfigError(
                "method input_perturbation with --ip-gamma 0 is the baseline; use --method "
                "baseline or a gamma > 0"
            )
        return cls(ScheduledSamplingConfig.baseline(config.ss_max_m), gamma)


METHOD = InputPerturbation
