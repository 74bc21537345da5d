"""Metric distribution plots and training-loss curves, written and opened back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from figures_helpers import evaluate_two_methods
from PIL import Image

from markup2im.errors import DataError
from markup2im.figures import plots
from markup2im.names import LOG_COLUMNS


def test_metric_plots_written(tmp_path: Path) -> None:
    evaluated = evaluate_two_methods(tmp_path)
    out = tmp_path / "plots" / "metrics.png"
    plots.metric_plots([(label, paths[0]) for label, paths in evaluated.items()], out)
    assert out.stat().st_size > 5000
    with Image.open(out) as image:
        assert image.width > 800 and image.height > 100
    with pytest.raises(DataError, match="missing column"):
        plots.metric_plots([("x", evaluated["math/baseline"][1])], tmp_path / "p.png")


def write_train_log(path: Path, steps: int, ss: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_COLUMNS)
        for step in range(1, steps + 1):
            loss = 0.5 * np.exp(-step / 60) + 0.02 + 0.01 * rng.random()
            prob = min(1.0, step / steps) * 0.5 if ss else 0.0
            writer.writerow([step, step // 50, loss, 1e-4, prob, 1 if ss else 0, 0.7 * step])
        if ss:  # a resumed run repeats the last steps
            writer.writerow([steps, steps // 50, 0.03, 1e-4, 0.5, 1, 0.7 * steps])


def test_loss_curves_from_train_logs(tmp_path: Path) -> None:
    base, ss = tmp_path / "base.csv", tmp_path / "ss.csv"
    write_train_log(base, 200, False, 0)
    write_train_log(ss, 150, True, 1)
    log = plots.read_train_log(ss)
    assert len(log["step"]) == 150 and log["loss"][-1] == 0.03
    out = tmp_path / "loss.png"
    plots.loss_curves([("math/baseline", base), ("math/scheduled_sampling", ss)], out)
    assert out.stat().st_size > 5000
    with Image.open(out) as image:
        assert image.size == (800, 450)
    empty = tmp_path / "empty.csv"
    empty.write_text("step,epoch,loss\n")
    with pytest.raises(DataError, match="empty.csv"):
        plots.loss_curves([("x", empty)], tmp_path / "l.png")


def test_moving_average() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    np.testing.assert_allclose(plots.moving_average(values, 2), [1, 1.5, 2.5, 3.5, 7])
    np.testing.assert_allclose(plots.moving_average(values, 1), values)
