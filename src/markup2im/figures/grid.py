"""Sample grids: one row per example, the gold image then each method's image, columns labelled."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from markup2im.atomic import atomic_path
from markup2im.errors import DataError
from markup2im.figures.images import (
    PAD,
    common_mode,
    enlarge,
    fill_color,
    label_band_height,
    label_row,
    open_image,
    upscale_factor,
)
from markup2im.figures.tables import Labelled
from markup2im.metrics import list_images

log = logging.getLogger(__name__)


def _common_names(
    gold_root: Path, preds: Labelled, limit: int, names: Sequence[str] | None
) -> list[str]:
    """File names in every directory (``names`` in their order, else sorted), at most ``limit``."""
    common = set(list_images(gold_root))
    for _label, directory in preds:
        common &= set(list_images(directory))
    chosen = [n for n in names if n in common] if names else sorted(common)
    chosen = chosen[: max(1, limit)]
    if not chosen:
        raise DataError(
            f"no image file names common to {gold_root} and " + ", ".join(str(d) for _l, d in preds)
        )
    return chosen


def _grid_rows(
    columns: Sequence[tuple[str, Path]], chosen: Sequence[str]
) -> list[list[Image.Image]]:
    """The images of each chosen example, one per column; DataError naming one of another size."""
    rows = [[open_image(directory / name) for _label, directory in columns] for name in chosen]
    size = rows[0][0].size
    for name, row in zip(chosen, rows, strict=True):
        for (label, directory), image in zip(columns, row, strict=True):
            if image.size != size:
                raise DataError(
                    f"{directory / name} ({label}) is {image.width}x{image.height}, "
                    f"expected {size[0]}x{size[1]} like the other grid images"
                )
    return rows


def sample_grid(
    gold_dir: str | os.PathLike[str],
    preds: Labelled,
    output: str | os.PathLike[str],
    limit: int = 8,
    names: Sequence[str] | None = None,
    scale: int | None = None,
) -> list[str]:
    """PNG grid: one row per example (file names common to every directory, sorted, at most
    ``limit``), columns gold then each labelled prediction directory. Returns the names shown."""
    gold_root = Path(gold_dir)
    chosen = _common_names(gold_root, preds, limit, names)
    columns = [("gold", gold_root)] + [(label, Path(d)) for label, d in preds]
    rows = _grid_rows(columns, chosen)
    size = rows[0][0].size
    mode = common_mode([im for row in rows for im in row])
    factor = scale or upscale_factor(size)
    cell_w, cell_h = size[0] * factor, size[1] * factor
    band = label_band_height()
    width = len(columns) * cell_w + (len(columns) + 1) * PAD
    height = band + len(rows) * (cell_h + PAD)
    grid = Image.new(mode, (width, height), fill_color(mode))
    label_row(ImageDraw.Draw(grid), [label for label, _d in columns], cell_w, mode)
    for r, row in enumerate(rows):
        for k, image in enumerate(row):
            position = (PAD + k * (cell_w + PAD), band + r * (cell_h + PAD))
            grid.paste(enlarge(image.convert(mode), factor), position)
    with atomic_path(output) as tmp:
        grid.save(tmp, format="PNG")
    log.info("wrote %s (%d examples x %d columns)", output, len(rows), len(columns))
    return chosen
