"""The compiled metric kernels: exact distinct columns, one compiled signature per kernel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from markup2im import metric_kernels, metrics


def test_distinct_columns_exact() -> None:
    rng = np.random.default_rng(9)
    for n_words in (1, 2, 3):
        pool = rng.integers(0, 2**63, size=(7, n_words), dtype=np.int64).astype(np.uint64)
        words = pool[rng.integers(0, 7, size=300)]
        distinct, index = metric_kernels.distinct_words(words)
        np.testing.assert_array_equal(distinct[index], words)
        assert len(distinct) == len(np.unique(words, axis=0))


def test_kernels_compiled_once_for_read_only_images() -> None:
    rng = np.random.default_rng(2)
    gold = np.full((64, 320), 255, dtype=np.uint8)
    gold[10:30, 20:200] = rng.integers(0, 256, size=(20, 180), dtype=np.uint8)
    moved = np.roll(gold, (2, -3), axis=(0, 1))
    pred = np.asarray(Image.fromarray(moved))  # read-only, as from a file
    assert not pred.flags.writeable
    metrics.compute_metrics(pred, gold)
    metrics.warm_up()
    for kernel in (
        metric_kernels.min_shift_costs,
        metric_kernels.dtw_cumulative,
        metric_kernels.ssim_mse,
        metric_kernels.pack_ink,
        metric_kernels.shift_words,
        metric_kernels.distinct_words,
    ):
        assert len(kernel.signatures) == 1, kernel
