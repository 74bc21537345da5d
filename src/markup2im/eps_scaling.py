"""Epsilon scaling (Ning et al., ICLR 2024, "Elucidating the exposure bias in diffusion models").

A sampler setting, torch-free: at every denoising step the noise a model predicts (or implies)
is divided by ``lambda_t = k t + b`` (t the training timestep, 0..T-1); ``b`` alone is the
constant form. Values just above 1 (about 1.004-1.017 in their tables) shrink the predicted
noise, which counters the exposure bias of sampling. ``EpsScale()`` (k 0, b 1) is the plain
sampler, exactly. The arithmetic is :meth:`markup2im.diffusion.NoiseSchedule.scale_noise`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markup2im.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000  # the paper's schedule: lambda_t must stay positive over t < this


@dataclass(frozen=True)
class EpsScale:
    """``lambda_t = k t + b``; the default is the identity (the plain sampler)."""

    k: float = 0.0
    b: float = 1.0

    def __post_init__(self) -> None:
        for name in ("k", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"eps_scale: {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"eps_scale: {name} must be finite, got {value}")
            # a plain float (numpy's included), so that str() is the command line's form
            object.__setattr__(self, name, float(value))
        lowest = min(self.b, self.k * (NUM_TRAIN_TIMESTEPS - 1) + self.b)
        if lowest <= 0 and self.k == 0:
            raise ConfigError(f"eps_scale: must be > 0, got {self.b:g}")
        if lowest <= 0:
            raise ConfigError(
                f"eps_scale: lambda_t = {self.k:g} t + {self.b:g} must be > 0 for every t in "
                f"0..{NUM_TRAIN_TIMESTEPS - 1} (it reaches {lowest:g})"
            )

    @classmethod
    def parse(cls, value: Any, key: str = "eps_scale") -> EpsScale:
        """From a number (the constant form), a mapping ``{k: ..., b: ...}``, or text: ``1.01``
        or ``k=0.00001,b=1.002`` (the command line's form). ConfigError names ``key``."""
        if isinstance(value, EpsScale):
            return value
        try:
            if isinstance(value, Mapping):
                unknown = set(value) - {"k", "b"}
                if unknown:
                    raise ConfigError(f"unknown keys {sorted(unknown)}; use k and b")
                return cls(k=value.get("k", 0.0), b=value.get("b", 1.0))
            if isinstance(value, str):
                return cls._parse_text(value)
            return cls(b=value)
        except ConfigError as exc:  # name the key the value came from, once
            raise ConfigError(f"{key}: {str(exc).removeprefix('eps_scale: ')}") from None

    @classmethod
    def _parse_text(cls, text: str) -> EpsScale:
        try:
            if "=" not in text:
                return cls(b=float(text))
            parts = (part.partition("=")[::2] for part in text.replace(" ", "").split(","))
            return cls.parse({k: float(v) for k, v in parts})
        except ValueError:
            raise ConfigError(f"expected a number or k=...,b=..., got {text!r}") from None

    @property
    def identity(self) -> bool:
        """Whether this is the plain sampler (lambda_t = 1 for every t)."""
        return self.k == 0 and self.b == 1

    def at(self, t: Any) -> Any:
        """``lambda_t`` for timesteps ``t`` (a number or a tensor)."""
        return self.k * t + self.b

    def __str__(self) -> str:
        """The command line's form (parses back to the same value)."""
        return f"{self.b!r}" if self.k == 0 else f"k={self.k!r},b={self.b!r}"


EpsScaleLike = EpsScale | float | Mapping[str, float] | str | None
"""Epsilon scaling as the Python API takes it: an EpsScale, 1.01, ``{"k": ..., "b": ...}``,
``"k=...,b=..."``, or None (the plain sampler)."""


def parse_eps_scale(value: EpsScaleLike, key: str = "eps_scale") -> EpsScale | None:
    """None for None (the plain sampler), else :meth:`EpsScale.parse` of ``value``."""
    return None if value is None else EpsScale.parse(value, key)
