"""Image I/O shared by training, generation and evaluation.

The model sees images as float tensors in [-1, 1], shape (C, H, W): converted to RGB first, then
to one-channel grayscale for grayscale domains (the original preprocessing), never resized.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from markup2im.errors import DataError


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
                image = Image.open(io.BytesIO(source["bytes"]))
            elif source.get("path"):
                image = Image.open(source["path"])
            else:
                raise DataError(f"{label}: empty image record")
        elif isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise DataError(f"{path}: image file not found")
            image = Image.open(path)
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
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (C, H, W) in [-1, 1] -> PIL L (C = 1) or RGB (C = 3) image."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    array = array.numpy()
    if array.shape[0] == 1:
        return Image.fromarray(array[0], mode="L")
    return Image.fromarray(array.transpose(1, 2, 0), mode="RGB")
