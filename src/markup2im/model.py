"""The whole markup-to-image model: frozen encoder, denoiser, noise schedule, and its directory.

Drawing images with it is :mod:`markup2im.pipeline`; the sampling loops are
:mod:`markup2im.sampling`. This module imports neither.

Saved layout (``Markup2ImModel.save_pretrained(directory)``, written atomically)::

    directory/
      markup2im_model.json         height, width, channels, model preset, encoder name,
                                   max markup length, format version
      denoiser/                    config.json + diffusion_pytorch_model.safetensors (diffusers)
      encoder/                     config.json + model.safetensors, tokenizer files,
                                   markup2im_encoder.json (transformers; the record lists
                                   every file written, and loading requires each)
      scheduler/scheduler_config.json   DDPMScheduler config (1000 steps, linear betas, epsilon)

The encoder is saved with the model (even the hub ones), so a trained model directory is complete
and loads without network access. Reloading gives bit-identical outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import nn

from markup2im.atomic import atomic_dir, write_json
from markup2im.diffusion import check_prediction_type, plain_config
from markup2im.errors import ModelError
from markup2im.models.denoiser import MarkupUNet
from markup2im.models.encoder import MarkupEncoder, missing_encoder_files
from markup2im.presets import get_model_preset

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_RECORD = "markup2im_model.json"
DENOISER_DIR = "denoiser"
ENCODER_DIR = "encoder"
SCHEDULER_DIR = "scheduler"
DENOISER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
SCHEDULER_FILES = ("scheduler_config.json",)

# The paper's DDPM: 1000 steps, linear betas 1e-4..0.02, epsilon prediction; sampling clips x0.
DEFAULT_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}


class Markup2ImModel(nn.Module):
    """Encoder + denoiser + noise-schedule config; only the denoiser is trained."""

    def __init__(
        self,
        denoiser: MarkupUNet,
        encoder: MarkupEncoder,
        *,
        height: int,
        width: int,
        channels: int,
        model_preset: str,
        max_markup_length: int,
        scheduler_config: dict | None = None,
        domain: str | None = None,
        markup_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.encoder = encoder
        self.height, self.width, self.channels = height, width, channels
        self.model_preset = model_preset
        self.max_markup_length = max_markup_length
        self.scheduler_config = plain_config(scheduler_config or DEFAULT_SCHEDULER_CONFIG)
        self.domain = domain  # the markup domain it was trained on, when known
        # the share of training examples given the empty markup (classifier-free guidance)
        self.markup_dropout = markup_dropout

    @classmethod
    def from_config(
        cls,
        *,
        model_preset: str,
        encoder: str,
        height: int,
        width: int,
        channels: int,
        max_markup_length: int | None = None,
        prediction_type: str = "epsilon",
        end_rule: str | None = None,
        attention_from: int | None = None,
    ) -> Markup2ImModel:
        """A freshly initialised model (denoiser from the current torch seed).

        ``max_markup_length`` None takes the preset's default (paper 1024). The denoiser's
        text-position tables hold ``max_markup_length + 1`` rows (markup tokens + end token).
        ``prediction_type`` (epsilon, the paper's; v_prediction; sample) is what the denoiser
        outputs; it is saved in the scheduler config, which every sampler reads.
        ``end_rule`` (``original``, ``single``; None: the encoder's default) says how a markup's
        token ids end: see :mod:`markup2im.models.encoder`. ``attention_from`` N puts
        cross-attention at every level of at most 1/N of the image side (None: the preset's
        levels); the denoiser's config.json records the levels.
        """
        preset = get_model_preset(model_preset).with_attention_from(attention_from)
        preset.check_image_size(height, width)
        length = preset.max_markup_length if max_markup_length is None else int(max_markup_length)
        enc = MarkupEncoder.load(encoder, length, end_rule=end_rule)
        denoiser = MarkupUNet.from_preset(
            preset,
            height=height,
            width=width,
            channels=channels,
            cross_attention_dim=enc.hidden_size,
            max_text_positions=length + 1,
        )
        return cls(
            denoiser,
            enc,
            height=height,
            width=width,
            channels=channels,
            model_preset=model_preset,
            max_markup_length=length,
            scheduler_config={
                **DEFAULT_SCHEDULER_CONFIG,
                "prediction_type": check_prediction_type(prediction_type),
            },
        )

    # -- use ------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def encode(self, markups: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, L, D) and bool mask (B, L) of the markups, on the model's device.

        Gradients reach the encoder only when it is trainable and gradients are enabled.
        """
        with torch.set_grad_enabled(self.encoder.trainable and torch.is_grad_enabled()):
            hidden, mask = self.encoder(markups)
        device = self.device
        return hidden.to(device), mask.to(device)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted noise for ``sample`` (B, C, H, W) at ``timesteps`` (B,)."""
        return self.denoiser(sample, timesteps, encoder_hidden_states, encoder_attention_mask)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The denoiser's parameters, then the encoder's when it is trainable."""
        yield from self.denoiser.parameters()
        if self.encoder.trainable:
            yield from self.encoder.parameters()

    def train(self, mode: bool = True) -> Markup2ImModel:
        """Set the denoiser's mode; the encoder stays in eval mode."""
        super().train(mode)
        self.encoder.train(False)
        return self

    def noise_scheduler(self) -> DDPMScheduler:
        """A new DDPMScheduler built from ``scheduler_config``."""
        return DDPMScheduler.from_config(self.scheduler_config)

    def record(self) -> dict:
        """What markup2im_model.json holds."""
        return {
            "format_version": FORMAT_VERSION,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "model_preset": self.model_preset,
            "encoder": self.encoder.name,
            "max_markup_length": self.max_markup_length,
            "cross_attention_dim": self.encoder.hidden_size,
            **({"domain": self.domain} if self.domain else {}),
            **({"markup_dropout": self.markup_dropout} if self.markup_dropout else {}),
        }

    # -- directory ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the model directory (layout in the module docstring) atomically."""
        with atomic_dir(directory) as tmp:
            self.denoiser.save_pretrained(tmp / DENOISER_DIR, safe_serialization=True)
            (tmp / ENCODER_DIR).mkdir()
            self.encoder.write_files(tmp / ENCODER_DIR)
            DDPMScheduler.from_config(self.scheduler_config).save_pretrained(tmp / SCHEDULER_DIR)
            write_json(tmp / MODEL_RECORD, self.record())
        logger.info("saved model to %s", directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> Markup2ImModel:
        """Load a directory written by :meth:`save_pretrained` (on CPU unless ``device``)."""
        directory = Path(directory)
        check_model_dir(directory)
        record = read_model_record(directory)
        try:
            denoiser = MarkupUNet.from_pretrained(directory / DENOISER_DIR, low_cpu_mem_usage=False)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"cannot load the denoiser in {directory / DENOISER_DIR}: {exc}"
            ) from exc
        encoder = MarkupEncoder.from_pretrained(directory / ENCODER_DIR)
        scheduler = DDPMScheduler.from_pretrained(directory / SCHEDULER_DIR)
        model = cls(
            denoiser,
            encoder,
            height=int(record["height"]),
            width=int(record["width"]),
            channels=int(record["channels"]),
            model_preset=str(record["model_preset"]),
            max_markup_length=int(record["max_markup_length"]),
            scheduler_config=plain_config(scheduler.config),
            domain=record.get("domain"),
            markup_dropout=record.get("markup_dropout"),
        )
        model.eval()
        if device is not None:
            model.to(device)
        return model


RECORD_INTEGERS = ("height", "width", "channels", "max_markup_length")
RECORD_STRINGS = ("model_preset",)
RECORD_FIX = (
    "; Markup2ImModel.save_pretrained (markup2im train, import-original) writes this file: "
    "restore it from a copy or save the model again"
)


def read_model_record(directory: Path) -> dict:
    """The checked content of ``directory/markup2im_model.json``: a ModelError that names the file
    and what is wrong with it, rather than a traceback from deep inside the loading."""
    path = directory / MODEL_RECORD
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not UTF-8 ({exc}){RECORD_FIX}") from exc
    except ValueError as exc:
        raise ModelError(f"{path}: not JSON ({exc}){RECORD_FIX}") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(record, dict):
        raise ModelError(f"{path}: not a JSON object{RECORD_FIX}")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
    missing = [key for key in (*RECORD_INTEGERS, *RECORD_STRINGS) if key not in record]
    if missing:
        raise ModelError(f"{path}: lacks {', '.join(missing)}{RECORD_FIX}")
    for key in RECORD_INTEGERS:
        try:
            number = int(record[key])
        except (TypeError, ValueError):
            number = 0
        if number <= 0:
            raise ModelError(
                f"{path}: {key} must be a positive integer, got {record[key]!r}{RECORD_FIX}"
            )
    for key in RECORD_STRINGS:
        if not isinstance(record[key], str):
            raise ModelError(f"{path}: {key} must be a string, got {record[key]!r}{RECORD_FIX}")
    dropout = record.get("markup_dropout")
    if dropout is not None and (
        isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 < dropout < 1
    ):
        raise ModelError(f"{path}: markup_dropout must lie in (0, 1), got {dropout!r}{RECORD_FIX}")
    return record


def check_model_dir(directory: Path) -> None:
    """Raise ModelError naming ``directory`` and every file that loading it needs and it lacks
    (the encoder's: see :func:`markup2im.models.encoder.missing_encoder_files`)."""
    if directory.exists() and not directory.is_dir():
        raise ModelError(f"model directory {directory} is a file, not a directory")
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    wanted = [MODEL_RECORD]
    wanted += [f"{DENOISER_DIR}/{f}" for f in DENOISER_FILES]
    wanted += [f"{SCHEDULER_DIR}/{f}" for f in SCHEDULER_FILES]
    missing = [w for w in wanted if not (directory / w).is_file()]
    missing += [f"{ENCODER_DIR}/{f}" for f in missing_encoder_files(directory / ENCODER_DIR)]
    if missing:
        raise ModelError(f"model directory {directory} is incomplete: missing {', '.join(missing)}")
