"""Shared helpers of the dataset tests: PNG bytes and a DatasetDict with the hub's features."""

from __future__ import annotations

import datasets
from PIL import Image

from markup2im.data.datasets import features_for
from markup2im.data.render.canvas import png_bytes


def blank(size: tuple[int, int] = (320, 64), mode: str = "L") -> bytes:
    """PNG bytes of a white page with one black pixel."""
    image = Image.new(mode, size, 255)
    image.putpixel((0, 0), 0)
    return png_bytes(image)


def hub_like_dict(
    rows: dict[str, int], *, bad: dict[tuple[str, int], bytes] | None = None
) -> datasets.DatasetDict:
    """A DatasetDict with the hub's math features: formula, filename, image."""
    bad = bad or {}
    splits = {}
    for split, count in rows.items():
        images = [bad.get((split, n), blank()) for n in range(count)]
        splits[split] = datasets.Dataset.from_dict(
            {
                "formula": [f"x_{{{split[:2]}{n}}}" for n in range(count)],
                "filename": [f"{split}{n:04d}.png" for n in range(count)],
                "image": [{"bytes": b, "path": None} for b in images],
            },
            features=features_for("formula"),
        )
    return datasets.DatasetDict(splits)
