"""Sample grids, read back cell by cell; the ``figures grid`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from figures_helpers import frame, make_image_dirs
from PIL import Image

from markup2im.cli import main
from markup2im.errors import DataError
from markup2im.figures import grid, images


def test_sample_grid_shape(tmp_path: Path) -> None:
    gold, base, ss = make_image_dirs(tmp_path)
    out = tmp_path / "grid.png"
    shown = grid.sample_grid(gold, [("baseline", base), ("ss", ss)], out, limit=3)
    assert shown == ["ex0.png", "ex1.png", "ex2.png"]
    factor = images.upscale_factor((48, 24))
    cell_w, cell_h, pad = 48 * factor, 24 * factor, images.PAD
    band = images.label_band_height()
    with Image.open(out) as written:
        assert written.size == (3 * cell_w + 4 * pad, band + 3 * (cell_h + pad))
        array = np.asarray(written.convert("L"))
    # row 2, column "ss" holds ss/ex2.png
    top, left = band + 2 * (cell_h + pad), pad + 2 * (cell_w + pad)
    expected = np.asarray(images.enlarge(frame(5, size=(48, 24)), factor))
    np.testing.assert_array_equal(array[top : top + cell_h, left : left + cell_w], expected)
    assert grid.sample_grid(gold, [("baseline", base)], out, limit=50) == [
        f"ex{i}.png" for i in range(5)
    ]


def test_sample_grid_without_common_names(tmp_path: Path) -> None:
    gold, base, _ss = make_image_dirs(tmp_path)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(DataError, match="no image file names common"):
        grid.sample_grid(gold, [("x", empty)], tmp_path / "g.png")


def test_grid_command(tmp_path: Path) -> None:
    gold, base, ss = make_image_dirs(tmp_path / "images")
    preds = ["--pred", f"math/baseline={base}", "--pred", f"math/ss={ss}"]
    command = ["figures", "grid", "--gold-dir", str(gold), *preds]
    assert main([*command, "--output", str(tmp_path / "g.png"), "--limit", "2"]) == 0
    with pytest.raises(SystemExit) as info:
        main(["figures", "grid", "--gold-dir", str(gold), "--pred", "no-label", "--output", "x"])
    assert info.value.code == 2
