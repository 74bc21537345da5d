"""Image helpers shared by the GIFs and the grids: integer enlargement, labels, opening files.

Small images are enlarged by an integer factor with nearest-neighbour resampling, so that a 64x64
table stays crisp and readable. This module imports neither torch nor numba (nor
:mod:`markup2im.metrics`): the Snakemake workflow imports :func:`upscale_factor` while planning.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from markup2im.errors import DataError

TARGET_SIDE = 192  # small images are enlarged until their longer side reaches at least this
PAD = 4
LABEL_SIZE = 14  # pixels
BACKGROUND = 255
LABEL_COLOR = 0


def upscale_factor(size: tuple[int, int], target: int = TARGET_SIDE) -> int:
    """Integer enlargement that brings the longer side of ``size`` to at least ``target``."""
    return max(1, math.ceil(target / max(size)))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """Enlarge by an integer factor with nearest-neighbour pixels (no blur)."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


@functools.cache
def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, at a readable size where FreeType is available."""
    try:
        return ImageFont.load_default(size=LABEL_SIZE)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: bitmap font
        return ImageFont.load_default()


def text_height(font: Any) -> int:
    """Pixel height of a line of ``font`` (ascenders and descenders included)."""
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom) + 1


def label_band_height() -> int:
    """Height of the band above the panels that holds their labels."""
    return text_height(label_font()) + 2 * PAD


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as L or RGB, fully loaded; DataError naming the file if unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def common_mode(images: Sequence[Image.Image]) -> str:
    """``L`` when every image is grayscale, else ``RGB`` (the mode they are pasted in)."""
    return "L" if all(im.mode == "L" for im in images) else "RGB"


def fill_color(mode: str) -> int | tuple[int, int, int]:
    """The background colour in ``mode``."""
    return BACKGROUND if mode == "L" else (BACKGROUND,) * 3


def ink_color(mode: str) -> int | tuple[int, int, int]:
    """The label colour in ``mode``."""
    return LABEL_COLOR if mode == "L" else (LABEL_COLOR,) * 3


def draw_label(draw: ImageDraw.ImageDraw, box: tuple[int, int, int], text: str, mode: str) -> None:
    """Centre ``text`` horizontally in the band starting at (x, y) of width w (box = x, y, w)."""
    x, y, width = box
    font = label_font()
    text_width = draw.textlength(text, font=font)
    while text_width > width and len(text) > 1:  # too wide for its panel: shorten with an ellipsis
        text = text[:-2] + "\u2026"
        text_width = draw.textlength(text, font=font)
    draw.text(
        (x + max(0, (width - text_width) / 2), y + PAD), text, font=font, fill=ink_color(mode)
    )


def label_row(
    draw: ImageDraw.ImageDraw, labels: Sequence[str], panel_width: int, mode: str
) -> None:
    """Draw ``labels`` in the top band, one centred over each panel (panels ``PAD`` apart)."""
    for k, label in enumerate(labels):
        draw_label(draw, (PAD + k * (panel_width + PAD), 0, panel_width), label, mode)
