"""Tests for markup2im.images: loading images as the model sees them, and refusing bombs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from image_helpers import bomb_png
from PIL import Image

from markup2im.errors import DataError
from markup2im.images import MAX_IMAGE_PIXELS, image_to_tensor, load_image, tensor_to_image

# just over markup2im's bound; over PIL's warning (89M pixels); over PIL's error (179M pixels)
BOMBS = [(4097, 4096), (10_000, 10_000), (20_000, 10_000)]


def test_the_bound_leaves_every_domain_canvas_far_inside() -> None:
    from markup2im.presets import DOMAINS

    assert all(100 * d.width * d.height < MAX_IMAGE_PIXELS for d in DOMAINS.values())
    assert MAX_IMAGE_PIXELS == 4096 * 4096


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), BOMBS)
def test_a_decompression_bomb_is_refused_naming_it(tmp_path, width, height) -> None:
    """A small PNG that decodes to gigabytes used to be decoded (or raised PIL's own
    DecompressionBombError, a traceback)."""
    data = bomb_png(width, height)
    assert len(data) < 100_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for source, name in ((path, ""), (data, "train[3]"), ({"bytes": data}, "row 7")):
        with pytest.raises(DataError, match="possible decompression bomb") as info:
            load_image(source, channels=1, name=name)
        assert str(info.value).startswith(f"{name or path}: ")
        assert "16,777,216 pixels (4096x4096)" in str(info.value)


def test_images_inside_the_bound_still_load() -> None:
    data = bomb_png(512, 256)
    image = load_image(data, channels=1, size=(512, 256))
    assert image.mode == "L" and image.size == (512, 256)


def test_tensors_round_trip() -> None:
    image = Image.new("RGB", (8, 4), (10, 200, 255))
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 4, 8) and tensor.dtype == torch.float32
    assert np.array_equal(np.asarray(tensor_to_image(tensor)), np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert load_image(buffer.getvalue(), channels=3).size == (8, 4)
