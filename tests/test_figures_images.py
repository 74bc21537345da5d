"""The image helpers of the figures: integer enlargement, and an import light enough for planning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from figures_helpers import frame

from markup2im.figures import images


def test_images_module_imports_neither_torch_nor_numba() -> None:
    # the Snakemake workflow imports upscale_factor while planning the DAG
    code = (
        "import sys, markup2im.figures.images\n"
        "heavy = [m for m in ('torch', 'numba', 'markup2im.metrics') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_upscale_factor_reaches_the_target_side() -> None:
    assert images.upscale_factor((64, 64)) == 3  # 192 / 64
    assert images.upscale_factor((48, 24)) == 4  # the longer side counts
    assert images.upscale_factor((50, 10)) == 4  # rounded up: at least the target
    assert images.upscale_factor((320, 64)) == 1  # never shrunk
    assert images.upscale_factor((10, 10), target=25) == 3


def test_enlarge_repeats_pixels() -> None:
    small = frame(2, size=(8, 6))
    assert images.enlarge(small, 1) is small
    big = np.asarray(images.enlarge(small, 3))
    assert big.shape == (18, 24)
    np.testing.assert_array_equal(big, np.repeat(np.repeat(np.asarray(small), 3, 0), 3, 1))
