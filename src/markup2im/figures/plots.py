"""Plots for the report: per-image metric distributions and training-loss curves.

Matplotlib is used through ``Figure`` objects with the Agg canvas (no global pyplot state, no
display needed), imported only when a plot is drawn.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from markup2im.atomic import atomic_path
from markup2im.errors import DataError
from markup2im.figures.tables import METRIC_TITLES, Labelled
from markup2im.metrics import METRICS

log = logging.getLogger(__name__)


def _number(cell: str | None) -> float:
    """A CSV cell as a float; NaN when empty or not a number."""
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_csv_columns(
    path: str | os.PathLike[str], required: Sequence[str]
) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV file (non-numeric cells become NaN)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            missing = [c for c in required if c not in fields]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            records = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    return {c: np.array([_number(r.get(c)) for r in records], dtype=np.float64) for c in fields}


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure (inches at 100 dpi), laid out so that titles and labels fit."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_figure(figure: Any, output: str | os.PathLike[str]) -> None:
    with atomic_path(output) as tmp:
        figure.savefig(tmp)
    log.info("wrote %s", output)


def metric_plots(metric_csvs: Labelled, output: str | os.PathLike[str]) -> None:
    """Box plots (mean marked) of each metric's per-image values, one box per labelled CSV."""
    if not metric_csvs:
        raise DataError("metric_plots: no metrics CSVs given")
    tables = [(label, _read_csv_columns(path, METRICS)) for label, path in metric_csvs]
    for (label, table), (_l, path) in zip(tables, metric_csvs, strict=True):
        if not len(table["dtw"]):
            raise DataError(f"{path} ({label}): no rows")
    figure = _figure(3.2 * len(METRICS), 1.2 + 0.45 * max(3, len(tables)))
    axes = figure.subplots(1, len(METRICS), sharey=True)
    labels = [label for label, _ in tables]
    for ax, metric in zip(axes, METRICS, strict=True):
        data = [table[metric][np.isfinite(table[metric])] for _l, table in tables]
        ax.boxplot(data, orientation="horizontal", showmeans=True, tick_labels=labels)
        ax.set_title(METRIC_TITLES[metric])
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # first label on top
    _save_figure(figure, output)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start), same length as ``values``."""
    if window <= 1 or len(values) == 0:
        return values.astype(np.float64)
    cumulative = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def read_train_log(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A ``train_log.csv`` (columns :data:`markup2im.names.LOG_COLUMNS`, of which step and loss
    are required): rows sorted by step, the last row kept for repeated steps (resumes)."""
    table = _read_csv_columns(path, ("step", "loss"))
    steps = table["step"]
    keep = np.isfinite(steps) & np.isfinite(table["loss"])
    if not keep.any():
        raise DataError(f"{path}: no rows with a step and a finite loss")
    table = {k: v[keep] for k, v in table.items()}
    order = np.argsort(table["step"], kind="stable")
    table = {k: v[order] for k, v in table.items()}
    last = np.append(table["step"][1:] != table["step"][:-1], True)
    return {k: v[last] for k, v in table.items()}


def loss_curves(
    train_logs: Labelled, output: str | os.PathLike[str], window: int | None = None
) -> None:
    """Training loss against step (raw, faint; moving average, solid) per labelled log, with the
    scheduled-sampling probability ``ss_prob`` on a second axis (dashed)."""
    if not train_logs:
        raise DataError("loss_curves: no training logs given")
    logs = [(label, read_train_log(path)) for label, path in train_logs]
    figure = _figure(8.0, 4.5)
    ax = figure.subplots()
    twin = ax.twinx()
    colors = [f"C{k % 10}" for k in range(len(logs))]
    all_positive = True
    for (label, table), color in zip(logs, colors, strict=True):
        steps, loss = table["step"], table["loss"]
        size = window or max(1, len(loss) // 50)
        ax.plot(steps, loss, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(loss, size), color=color, linewidth=1.8, label=label)
        all_positive &= bool((loss > 0).all())
        if "ss_prob" in table and np.isfinite(table["ss_prob"]).any():
            twin.plot(steps, table["ss_prob"], color=color, linestyle="--", linewidth=1.2)
    if all_positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average; raw faint)")
    twin.set_ylabel("scheduled sampling probability (dashed)")
    twin.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    _save_figure(figure, output)
