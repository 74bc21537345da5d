"""What a training run depends on (:class:`TrainConfig`) and what it produced (:class:`TrainResult`).

Torch-free: ``markup2im train`` builds its flags from these fields (name, default, help), so the
paper's defaults live here and nowhere else. Defaults are the paper's: AdamW (lr 1e-4, betas
0.9/0.999, eps 1e-8, weight decay 0.01), 500 warm-up steps then cosine to 0, gradient-norm clip
1.0, batch 16 per process, 100 epochs, fp32, no EMA, data-shuffle seed 42 and torch/numpy/random
seed 1234.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markup2im.errors import ConfigError
from markup2im.names import BASELINE, METHODS, PREDICTION_TYPES

MIXED_PRECISION: tuple[str, ...] = ("no", "fp16", "bf16")
RESUME_MODES: tuple[str, ...] = ("none", "latest", "auto")
DEFAULT_LOG_EVERY = 10
# settings that change how fast a run goes, not what it computes: a checkpoint resumes across them
SPEED_SETTINGS = ("log_every", "channels_last", "compile", "cache_encoder")
# settings that say where and how a run is kept, not what it trains
BOOKKEEPING = ("dataset_dir", "output_dir", "resume", "checkpoint_every", "checkpoints_total_limit",
               "num_workers", "snapshot_every", "deadline", "time_limit")  # fmt: skip


def setting(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A TrainConfig field with what its ``markup2im train`` flag needs: ``help``, and any of
    ``choices``, ``required``, ``metavar`` or ``flag=False`` (no flag: set by the command)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the flags of ``markup2im train``)."""

    dataset_dir: Path = setting(help="dataset directory (train split)")
    output_dir: Path = setting(help="run directory O")
    method: str = setting(BASELINE, "training method", choices=tuple(METHODS), required=True)
    model_preset: str = setting("paper", "model size preset (default: paper)")
    encoder: str | None = setting(
        None, "markup encoder: hub name, local directory or 'offline' (default: the domain's)"
    )
    max_markup_length: int | None = setting(
        None, "tokens kept (default: the model preset's, 1024 for paper)"
    )
    prediction_type: str = setting(
        "epsilon",
        "what the denoiser predicts: the noise (the paper's), v, or the clean image",
        choices=PREDICTION_TYPES,
    )
    train_encoder: bool = setting(
        False, "train the markup encoder with the denoiser (the paper keeps it frozen)"
    )
    attention_from: int | None = setting(
        None,
        "cross-attention at every level of at most 1/N of the image side, N a power of two "
        "(default: the model preset's levels; small: 8)",
        metavar="N",
    )
    markup_dropout: float | None = setting(
        None,
        "classifier-free guidance's training half: each example's markup is replaced by the "
        "empty markup with this probability (about 0.1; default: never, as in the paper)",
        metavar="P",
    )
    snr_gamma: float | None = setting(
        None, "min-SNR-gamma loss weighting (e.g. 5); default: plain MSE as in the paper"
    )
    epochs: int = setting(100, "passes over the train split")
    max_steps: int | None = setting(None, "optimizer steps (overrides epochs)")
    batch_size: int = setting(16, "per process (default 16)")
    learning_rate: float = setting(1e-4, "AdamW learning rate")
    warmup_steps: int = setting(500, "linear warm-up steps before the cosine decay")
    max_grad_norm: float = setting(1.0, "gradient-norm clip")
    gradient_accumulation_steps: int = setting(1, "batches per optimizer step")
    mixed_precision: str = setting("no", "autocast of the denoiser", choices=MIXED_PRECISION)
    ema: bool = setting(False, "keep an EMA of the weights and save it")
    ema_decay: float = setting(0.9999, "EMA decay")
    seed: int = setting(1234, "torch/numpy/random seed (default 1234)")
    data_seed: int = setting(42, "data shuffle seed (default 42)")
    ss_max_m: int = setting(1, "longest rollout M (default 1)")
    ss_start: tuple[float, ...] | None = setting(None, "weights of m=1..M at start")
    ss_end: tuple[float, ...] | None = setting(None, "weights at the end (0.8)")
    ss_min_t: int | None = setting(
        None, "skip scheduled sampling when min(t) <= this (the original's earlier guard: 50)"
    )
    ip_gamma: float | None = setting(
        None,
        "input perturbation (DDPM-IP): the input's noise is eps + gamma xi, the target stays "
        "eps's (default: 0.1 for input_perturbation; off for the other methods; with "
        "scheduled_sampling it perturbs every step's start)",
    )
    checkpoint_every: int = setting(500, "steps between checkpoints")
    checkpoints_total_limit: int | None = setting(3, "checkpoints kept (0: all)")
    snapshot_every: int | None = setting(
        None, "also save the model to O/snapshots/step-N every N steps (for learning curves)"
    )
    resume: str = setting(
        "none",
        "latest: continue from the newest checkpoint (refused for other settings or data); "
        "auto: the same, but checkpoints of other settings or data are moved aside to "
        "O/checkpoints.stale-<date>-<time> and training starts from scratch (the workflow's); "
        "none (default): refuse to start where checkpoints exist",
        choices=("latest", "auto", "none"),
    )
    limit_train: int | None = setting(None, "use the first N train examples")
    num_workers: int = setting(
        0, "data-loader worker processes (decode images, tokenise markup; kept across epochs)"
    )
    weight_decay: float = setting(0.01, "AdamW weight decay")
    adam_beta1: float = setting(0.9, "AdamW beta1")
    adam_beta2: float = setting(0.999, "AdamW beta2")
    adam_epsilon: float = setting(1e-8, "AdamW epsilon")
    warmup_per_process: bool = setting(
        False,
        "the original's warm-up on N processes: its scheduler advanced once per process per "
        "step, so warm-up ended after warmup-steps / N optimizer steps (default: warmup-steps "
        "optimizer steps whatever N)",
    )
    log_every: int = setting(
        DEFAULT_LOG_EVERY,
        "read the losses back from the device every N steps (each read waits for the GPU); "
        "train_log.csv still gets one row per step (default 10)",
        metavar="N",
    )
    channels_last: bool = setting(False, "channels-last memory format (GPUs)")
    compile: bool = setting(
        False, "torch.compile the denoiser (markup padded to a few lengths; minutes to compile)"
    )
    cache_encoder: bool = setting(
        False,
        "compute each example's frozen-encoder output once and keep it on the device "
        "(small datasets)",
    )
    # unix times set by `markup2im train --walltime-margin`: checkpoint and stop at the first
    # step after ``deadline``; ``time_limit`` is the hard end behind it (messages only)
    deadline: float | None = setting(None, flag=False)
    time_limit: float | None = setting(None, flag=False)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        self._check_counts()
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(
                f"train: learning_rate must be a positive number, got {self.learning_rate}"
            )
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ConfigError("train: warmup_steps and num_workers must be >= 0")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"train: max_grad_norm must be > 0, got {self.max_grad_norm}")
        for key, known in (
            ("method", tuple(METHODS)),
            ("mixed_precision", MIXED_PRECISION),
            ("resume", RESUME_MODES),
            ("prediction_type", PREDICTION_TYPES),
        ):
            if getattr(self, key) not in known:
                raise ConfigError(
                    f"train: {key} must be one of {', '.join(known)}, got {getattr(self, key)!r}"
                )
        if self.snr_gamma is not None and not (
            math.isfinite(self.snr_gamma) and self.snr_gamma > 0
        ):
            raise ConfigError(f"train: snr_gamma must be a positive number, got {self.snr_gamma}")
        dropout = self.markup_dropout
        if dropout is not None and not (math.isfinite(dropout) and 0 <= dropout < 1):
            raise ConfigError(
                f"train: markup_dropout must lie in [0, 1), got {self.markup_dropout}"
            )
        if self.ip_gamma is not None and not (math.isfinite(self.ip_gamma) and self.ip_gamma >= 0):
            raise ConfigError(f"train: ip_gamma must be a number >= 0, got {self.ip_gamma}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"train: ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.cache_encoder and self.train_encoder:
            raise ConfigError(
                "train: cache_encoder keeps the encoder's outputs, which a trained encoder "
                "changes every step; drop cache_encoder or train_encoder"
            )
        for key in ("deadline", "time_limit"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"train: {key} must be a unix time, got {value}")

    def _check_counts(self) -> None:
        """Counts that must be at least 1 (the optional ones when set)."""
        counts = ("epochs", "batch_size", "gradient_accumulation_steps", "checkpoint_every",
                  "max_markup_length", "max_steps", "limit_train", "checkpoints_total_limit",
                  "snapshot_every", "log_every")  # fmt: skip
        for key in counts:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"train: {key} must be >= 1, got {value}")

    def fingerprint(self) -> dict[str, Any]:
        """Settings a checkpoint can only be resumed with unchanged."""
        skip = {*BOOKKEEPING, *SPEED_SETTINGS}
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k not in skip
        }


@dataclass
class TrainResult:
    """What a finished run produced."""

    model_dir: Path
    steps: int
    final_loss: float
    world_size: int
