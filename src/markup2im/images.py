"""Image I/O shared by training, generation and evaluation.

The model sees images as float tensors in [-1, 1], shape (C, H, W): converted to RGB first, then
to one-channel grayscale for grayscale domains (the original preprocessing), never resized.
Every image file is opened by :func:`open_image`, which refuses one of more than
``MAX_IMAGE_PIXELS`` pixels before decoding it (a decompression bomb). This module imports torch
only in the tensor functions, so that the torch-free evaluator can use it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from markup2im.errors import DataError

if TYPE_CHECKING:
    import torch

# The largest image markup2im reads: 4096 x 4096 pixels (48 MiB as RGB), 195 times the largest
# domain canvas (music, 448 x 192). PIL's own bound (89 M pixels warns, 179 M raises) would let a
# few-KB PNG decode to over 500 MB as RGB per image, in every evaluation worker at once.
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE


def _bomb(label: str, what: str) -> DataError:
    return DataError(
        f"{label}: a possible decompression bomb, refused before decoding ({what}); markup2im "
        f"reads images of at most {MAX_IMAGE_PIXELS:,} pixels ({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})"
    )


def open_image(source: str | os.PathLike[str] | bytes | IO[bytes], label: str) -> Image.Image:
    """``Image.open(source)`` (undecoded), or a DataError naming ``label`` when the image has more
    than ``MAX_IMAGE_PIXELS`` pixels. PIL's errors for unreadable files pass through."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        raise _bomb(label, str(exc).rstrip(".")) from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise _bomb(label, f"{width}x{height} pixels, WxH")
    return image


def load_image(
    source: Any,
    *,
    channels: int,
    size: tuple[int, int] | None = None,
    name: str = "",
) -> Image.Image:
    """Open ``source`` (path, bytes, PIL image or a ``datasets`` image dict) as L or RGB.

    ``size`` is the expected (width, height); a different size, or an undecodable image, raises a
    DataError that names the image (``name``, or the path).
    """
    label = name or (str(source) if isinstance(source, str | os.PathLike) else "image")
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, dict):  # datasets' undecoded Image feature
            if source.get("bytes") is not None:
                image = open_image(source["bytes"], label)
            elif source.get("path"):
                image = open_image(source["path"], label)
            else:
                raise DataError(f"{label}: empty image record")
        elif isinstance(source, bytes):
            image = open_image(source, label)
        else:
            path = Path(source)
            if not path.is_file():
                raise DataError(f"{path}: image file not found")
            image = open_image(path, label)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label}: cannot decode image ({exc})") from exc
    image = image.convert("RGB")
    if channels == 1:
        image = image.convert("L")
    if size is not None and image.size != tuple(size):
        raise DataError(
            f"{label}: image is {image.size[0]}x{image.size[1]} (WxH), expected {size[0]}x{size[1]}"
        )
    return image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL L/RGB image -> float32 tensor (C, H, W) in [-1, 1]."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (C, H, W) in [-1, 1] -> PIL L (C = 1) or RGB (C = 3) image."""
    import torch

    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    array = array.numpy()
    if array.shape[0] == 1:
        return Image.fromarray(array[0], mode="L")
    return Image.fromarray(array.transpose(1, 2, 0), mode="RGB")
