"""The paper authors' released checkpoints: their key layout, and conversion into ours.

The authors trained with their fork of diffusers 0.2.4 and released plain ``torch.save`` state
dicts of its ``UNet2DConditionModel`` (``model_e100_lr0.0001.pt.100``, one per domain and method).
Each has 999 entries: 208,996,609 parameters for math, tables and music, 194,444,163 for
molecules (RGB, 384-wide encoder states). That layout differs from ours in:

* names: ``down_blocks``/``up_blocks`` (ours ``down_levels``/``up_levels``),
  ``downsamplers.0``/``upsamplers.0`` (ours ``downsample``/``upsample``), ``mid_block.attentions.0``
  (ours ``mid_block.attention``), and the transformer's layers under ``transformer_blocks.0``;
* ``proj_in``/``proj_out`` of each transformer block are 1x1 convolutions there, linear layers
  here (the same map on every pixel: the kernel ``(C, C, 1, 1)`` is the weight ``(C, C)``);
* the position tables of each transformer block (the fork's
  ``SpatialDecoderPositionEncoderPositionTransformer``) are ``wpe_h`` (image rows, 64 x C/2),
  ``wpe_w`` (image columns, 320 x C/2) and ``wpe_l`` (markup positions, 1025 x the encoder's
  width), the same size at every level; ours are sized per level: the rows and columns a level
  uses are the leading entries of the original's, and the text-position table keeps its first
  ``max_markup_length + 1`` rows (1024 markup tokens + the end token in the paper).

:func:`original_shapes` is the exact layout (names and shapes) of the authors' file for a
denoiser; the tests compare it with every entry of the authors' four models.
:func:`convert_state_dict` checks that every entry of the file is used and every parameter of our
denoiser is filled, with the right shape, and names each entry that is not (a file that names the
position tables otherwise fails listing the entries it did not expect next to those it missed);
:func:`import_original` writes a model directory that ``generate``, ``draw`` and the demo use like
a trained one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from markup2im.atomic import write_json
from markup2im.errors import ModelError
from markup2im.model import Markup2ImModel
from markup2im.models.denoiser import MarkupUNet
from markup2im.presets import get_domain, get_model_preset

logger = logging.getLogger(__name__)

#: Our name of a position table in a transformer block -> the original's (``.weight`` follows):
#: da03/diffusers, models/attention.py, ``SpatialDecoderPositionEncoderPositionTransformer``.
ORIGINAL_POSITION_NAMES: dict[str, str] = {
    "row_embedding": "wpe_h",
    "col_embedding": "wpe_w",
    "text_position_embedding": "wpe_l",
}
#: Rows of each position table in the original, at every level (its max_h, max_w, max_l).
ORIGINAL_TABLE_ROWS: dict[str, int] = {
    "row_embedding": 64,
    "col_embedding": 320,
    "text_position_embedding": 1025,
}
#: Written into an imported model directory: where its weights came from.
PROVENANCE_FILE = "original_checkpoint.json"

# How an original tensor becomes ours.
COPY = "copy"  # same shape
CONV_1X1 = "conv1x1"  # (out, in, 1, 1) kernel -> (out, in) linear weight
LEADING_ROWS = "leading_rows"  # a longer table of the same width -> its first rows

_TRANSFORMER_LAYERS = ("norm1", "norm2", "norm3", "attn1", "attn2", "ff")
# what a file that Git LFS has not fetched starts with
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


@dataclass(frozen=True)
class Entry:
    """One state-dict entry of the original model and the parameter of ours it fills."""

    original: str
    ours: str
    kind: str
    shape: tuple[int, ...]  # our parameter's shape
    original_shape: tuple[int, ...]  # the tensor's shape in the authors' file


def _block_entry(prefix: str, local: str) -> tuple[str, str]:
    """(original key, kind) of ``local`` (a key inside one of our transformer blocks)."""
    module, _, leaf = local.partition(".")
    if module in ORIGINAL_POSITION_NAMES:
        return f"{prefix}{ORIGINAL_POSITION_NAMES[module]}.{leaf}", LEADING_ROWS
    if module in _TRANSFORMER_LAYERS:
        return f"{prefix}transformer_blocks.0.{local}", COPY
    if module in ("proj_in", "proj_out") and leaf == "weight":
        return f"{prefix}{local}", CONV_1X1
    return f"{prefix}{local}", COPY


_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^down_levels\.(\d+)\.downsample\."), r"down_blocks.\1.downsamplers.0."),
    (re.compile(r"^up_levels\.(\d+)\.upsample\."), r"up_blocks.\1.upsamplers.0."),
    (re.compile(r"^down_levels\."), "down_blocks."),
    (re.compile(r"^up_levels\."), "up_blocks."),
    (re.compile(r"^mid_block\.attention\."), "mid_block.attentions.0."),
)
# A key inside a transformer block (after renaming): its block prefix and the rest.
_BLOCK = re.compile(r"^((?:down_blocks|up_blocks|mid_block)\.(?:\d+\.)?attentions\.\d+\.)(.+)$")


def original_layout(denoiser: MarkupUNet) -> list[Entry]:
    """The original state-dict entries that ``denoiser`` corresponds to, in our parameter order."""
    entries = []
    for ours, tensor in denoiser.state_dict().items():
        key = ours
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        kind = COPY
        block = _BLOCK.match(key)
        if block:
            key, kind = _block_entry(block.group(1), block.group(2))
        shape = tuple(tensor.shape)
        entries.append(Entry(key, ours, kind, shape, _original_shape(ours, kind, shape)))
    return entries


def _original_shape(ours: str, kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape that the authors' file stores for our parameter ``ours`` of ``shape``."""
    if kind == CONV_1X1:
        return (*shape, 1, 1)
    if kind == LEADING_ROWS:
        table = ours.split(".")[-2]  # e.g. down_levels.2.attentions.0.row_embedding.weight
        return (ORIGINAL_TABLE_ROWS[table], *shape[1:])
    return shape


def original_shapes(denoiser: MarkupUNet) -> dict[str, tuple[int, ...]]:
    """Every entry (name -> shape) of the authors' checkpoint that fills ``denoiser``: the
    layout of their released file for a paper-preset denoiser of the domain's size."""
    return {e.original: e.original_shape for e in original_layout(denoiser)}


def _converted(entry: Entry, tensor: torch.Tensor) -> torch.Tensor | str:
    """The tensor for our parameter, or why ``tensor`` cannot fill it."""
    got = tuple(tensor.shape)
    if not tensor.is_floating_point():
        return f"{entry.original}: dtype {tensor.dtype}, expected a floating-point tensor"
    if entry.kind == CONV_1X1:
        if got != (*entry.shape, 1, 1):
            return f"{entry.original}: shape {got}, expected {(*entry.shape, 1, 1)} (1x1 conv)"
        return tensor[:, :, 0, 0]
    if entry.kind == LEADING_ROWS:
        rows, width = entry.shape
        if len(got) != 2 or got[1] != width or got[0] < rows:
            return (
                f"{entry.original}: shape {got}, expected (at least {rows}, {width}): a "
                f"position table of width {width} with the {rows} rows this model uses"
            )
        return tensor[:rows]
    if got != entry.shape:
        return f"{entry.original}: shape {got}, expected {entry.shape}"
    return tensor


def convert_state_dict(
    original: Mapping[str, torch.Tensor], denoiser: MarkupUNet, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Our state dict for ``denoiser`` from an original one; ModelError naming every entry that
    is unknown, missing or of the wrong shape (``source`` names the file in the message)."""
    layout = original_layout(denoiser)
    expected = {e.original for e in layout}
    problems = [
        f"unexpected entry {k} {tuple(original[k].shape)}" for k in original if k not in expected
    ]
    converted: dict[str, torch.Tensor] = {}
    for entry in layout:
        if entry.original not in original:
            problems.append(f"missing entry {entry.original} (for our {entry.ours} {entry.shape})")
            continue
        value = _converted(entry, original[entry.original])
        if isinstance(value, str):
            problems.append(value)
        else:
            converted[entry.ours] = value.detach().to(torch.float32).contiguous()
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise ModelError(
            f"{source}: not a checkpoint of this model ({len(original)} entries, "
            f"{len(layout)} expected):\n  {shown}{more}"
        )
    return converted


def load_original_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a released checkpoint (tensors only, ``weights_only``); the ``module.`` prefix that a
    checkpoint saved from a distributed wrapper carries is removed, as the original loader did."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    with open(path, "rb") as handle:
        if handle.read(len(_LFS_POINTER)) == _LFS_POINTER:
            raise ModelError(
                f"{path} is a Git LFS pointer, not the checkpoint: fetch the file itself "
                f"(git lfs pull in a clone of the original repository)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common base class
        raise ModelError(
            f"{path}: cannot read as a torch state dict ({exc}); a truncated or damaged "
            f"download fails so: compare its size and sha256 with the original's"
        ) from exc
    problem = _not_a_state_dict(state)
    if problem:
        raise ModelError(f"{path}: not a state dict (a mapping of names to tensors): {problem}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _not_a_state_dict(state: object) -> str | None:
    """Why ``state`` is not a mapping of names to tensors (its first offending entry), or None."""
    if not isinstance(state, Mapping):
        return f"the file holds a {type(state).__name__}"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"entry {key!r} has a {type(key).__name__} name"
        if not torch.is_tensor(value):
            return f"entry {key!r} is a {type(value).__name__}, not a tensor"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_original(
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    domain: str,
    encoder: str | None = None,
    model_preset: str = "paper",
    height: int | None = None,
    width: int | None = None,
    max_markup_length: int | None = None,
) -> Markup2ImModel:
    """Convert one released checkpoint into a model directory (``save_pretrained`` layout).

    The model is ours with the checkpoint's weights: the ``model_preset`` denoiser (the paper's)
    at the domain's image size and colour, the domain's encoder of the paper unless ``encoder``
    (a hub name or a local directory) is given, the paper's DDPM schedule. The directory also
    holds ``original_checkpoint.json`` (the file, its sha256, entry and parameter counts).
    """
    spec = get_domain(domain)
    checkpoint = Path(checkpoint)
    state = load_original_state_dict(checkpoint)
    length = max_markup_length or get_model_preset(model_preset).max_markup_length
    model = Markup2ImModel.from_config(
        model_preset=model_preset,
        encoder=encoder or spec.hub_encoder,
        height=height or spec.height,
        width=width or spec.width,
        channels=spec.channels,
        max_markup_length=length,
    )
    weights = convert_state_dict(state, model.denoiser, source=str(checkpoint))
    model.denoiser.load_state_dict(weights, strict=True)
    model.eval()
    model.save_pretrained(output_dir)
    write_json(
        Path(output_dir) / PROVENANCE_FILE,
        {
            "checkpoint": str(checkpoint),
            "sha256": _sha256(checkpoint),
            "entries": len(state),
            "parameters": sum(t.numel() for t in state.values()),
            "domain": domain,
            "encoder": model.encoder.name,
            "model_preset": model_preset,
        },
    )
    logger.info(
        "imported %s (%d entries) into %s with encoder %s",
        checkpoint,
        len(state),
        output_dir,
        model.encoder.name,
    )
    return model
