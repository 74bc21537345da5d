"""Crop a rendering to its ink and place it top-left on a white canvas of the exact size.

Every renderer ends here, so all domains share one definition of "the image of a markup": ink
(anything darker than ``INK_THRESHOLD`` in any channel) cropped tight, shrunk only when it does not
fit (keeping its aspect ratio), pasted at (0, 0) on white.

A rendering that would have to shrink more than ``MAX_SHRINK`` times is refused as too small to
read (``TooSmallError``): every renderer draws its markup at a size where the smallest marks
(a subscript at 100 dpi, a staff space at 110 dpi, an 8 px table font) are 5 to 8 pixels tall,
so beyond 4x they fall under 2 pixels and merge; a 100 KB formula would otherwise become a grey
line one pixel high that counts as an image of its markup.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# A pixel is ink when one of its channels is below this value; anti-aliasing leaves a faint halo
# of 250..254 that should not widen the crop.
INK_THRESHOLD = 250
MAX_SHRINK = 4.0  # larger reductions leave nothing readable (see the module docstring)


class BlankImageError(ValueError):
    """The rendering has no ink at all."""


class TooSmallError(ValueError):
    """The rendering would have to shrink too much to fit: nothing of it would be readable."""


@dataclass(frozen=True)
class Fitted:
    """A rendering fitted to its canvas."""

    image: Image.Image
    shrunk: bool  # True when the ink did not fit and was scaled down
    ink_size: tuple[int, int]  # (width, height) of the ink before any shrinking


def flatten(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` ("L" or "RGB"), with any transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB").convert(mode) if mode == "L" else image.convert(mode)


def ink_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of the ink, or None for a blank image."""
    array = np.asarray(image)
    mask = array < INK_THRESHOLD if array.ndim == 2 else (array < INK_THRESHOLD).any(axis=-1)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fit_to_canvas(
    image: Image.Image,
    width: int,
    height: int,
    mode: str = "L",
    max_shrink: float | None = MAX_SHRINK,
) -> Fitted:
    """Crop ``image`` to its ink and place it top-left on a white ``width`` x ``height`` canvas.

    Raises BlankImageError for an image without ink and TooSmallError when the ink would have
    to shrink more than ``max_shrink`` times (None: no limit).
    """
    image = flatten(image, mode)
    box = ink_box(image)
    if box is None:
        raise BlankImageError("rendered image is blank (no ink)")
    ink = image.crop(box)
    ink_size = ink.size
    shrunk = ink.width > width or ink.height > height
    if shrunk:
        scale = min(width / ink.width, height / ink.height)
        if max_shrink is not None and scale * max_shrink < 1:
            raise TooSmallError(
                f"too small to read: the rendering is {ink.width} x {ink.height} pixels and would "
                f"shrink {1 / scale:.1f}x to fit {width} x {height} (at most {max_shrink:g}x)"
            )
        size = (
            min(width, max(1, round(ink.width * scale))),
            min(height, max(1, round(ink.height * scale))),
        )
        ink = ink.resize(size, Image.Resampling.LANCZOS)
    white = 255 if mode == "L" else (255, 255, 255)
    canvas = Image.new(mode, (width, height), white)
    canvas.paste(ink, (0, 0))
    return Fitted(canvas, shrunk, ink_size)


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as PNG (deterministic: no timestamps or text chunks)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
