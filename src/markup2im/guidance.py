"""Classifier-free guidance (Ho and Salimans, 2021): markup dropout in training, a guidance scale
in sampling.

A model trained with ``markup_dropout`` p has seen the empty markup (:data:`UNCONDITIONAL_MARKUP`)
in place of an example's markup with probability p, so it also predicts unconditionally. A
sampler with guidance scale w runs the denoiser twice per step, on the markup and on the empty
markup, and uses ``uncond + w (cond - uncond)``: w = 1 is the conditional output alone (the plain
sampler, bit for bit: the second pass is skipped), w = 0 the unconditional one, w > 1 pushes the
image further towards what the markup asks for. The combination is linear, so it applies to
every prediction type (noise, v or the clean image) alike.

Torch-free: the workflow's config check and the command line parse guidance scales without it.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from markup2im.errors import ConfigError

UNCONDITIONAL_MARKUP = ""  # what the unconditional branch is given, in training and sampling
NO_GUIDANCE = 1.0  # the guidance scale of the plain sampler

T = TypeVar("T")


def check_guidance_scale(value: Any, key: str = "guidance_scale") -> float:
    """``value`` as a guidance scale: a finite number >= 0 (ConfigError naming ``key``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number >= 0 (1: no guidance), got {value!r}")
    scale = float(value)
    if not (math.isfinite(scale) and scale >= 0):
        raise ConfigError(f"{key} must be a finite number >= 0 (1: no guidance), got {value!r}")
    return scale


def parse_guidance_scale(value: Any, key: str = "guidance_scale") -> float | None:
    """:func:`check_guidance_scale`, with None (the plain sampler) passed through."""
    return None if value is None else check_guidance_scale(value, key)


def guided(scale: float | None) -> bool:
    """Whether a sampler with guidance scale ``scale`` (None: the default) needs the
    unconditional pass."""
    return scale is not None and float(scale) != NO_GUIDANCE


def guide(cond: T, uncond: T, scale: float) -> T:
    """The guided output ``uncond + scale (cond - uncond)`` (tensors or numbers)."""
    return uncond + scale * (cond - uncond)
