"""Plain DDPM training (the paper's baseline): scheduled sampling whose rollout weights are 0.

Being the same trainer with m always 0 keeps both methods' randomness identical step by step
(t, the uniform that draws m, the noise), so they differ only by what the method changes.
"""

from __future__ import annotations

from markup2im.errors import ConfigError
from markup2im.scheduled_sampling import ScheduledSamplingConfig
from markup2im.training.config import TrainConfig
from markup2im.training.methods.scheduled_sampling import ScheduledSampling


class Baseline(ScheduledSampling):
    """Every rollout weight 0, so m is always 0."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> Baseline:
        given = [w for w in (*(config.ss_start or ()), *(config.ss_end or ())) if w != 0]
        if given:
            raise ConfigError(
                "method baseline trains with scheduled-sampling weights 0; drop --ss-start/"
                "--ss-end or use --method scheduled_sampling"
            )
        if config.ip_gamma:
            raise ConfigError(
                "method baseline trains without input perturbation; drop --ip-gamma or use "
                "--method input_perturbation"
            )
        return cls(ScheduledSamplingConfig.baseline(config.ss_max_m))


METHOD = Baseline
