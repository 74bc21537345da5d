"""The metrics table (dataset x method, ``mean ± std`` next to a blank page's scores) and the
titles and number formats that every table and plot of the report shares."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markup2im.atomic import atomic_path, write_text
from markup2im.errors import DataError
from markup2im.figures.html import table_page
from markup2im.metrics import CLIP, HIGHER_IS_BETTER, METRICS

log = logging.getLogger(__name__)

_NAMES = {"dtw": "DTW", "dtw_shift": "DTW (shift)", "ssim": "SSIM", "mse": "MSE"}
_ARROW = {True: "\u2191", False: "\u2193"}  # higher / lower is better
METRIC_TITLES = {m: f"{_NAMES.get(m, m)} {_ARROW[HIGHER_IS_BETTER[m]]}" for m in METRICS}
CLIP_TITLE = f"CLIP {_ARROW[True]}"

#: ``(label, path)`` pairs, as the command line's ``LABEL=PATH`` arguments give them.
Labelled = Sequence[tuple[str, str | os.PathLike[str]]]


def split_label(label: str) -> tuple[str, str]:
    """``dataset/method`` -> (dataset, method); a label without '/' is a method alone."""
    dataset, sep, method = label.partition("/")
    return (dataset, method) if sep else ("", label)


def format_number(value: float, sign: bool = False) -> str:
    """``value`` with a precision suited to its magnitude (``sign``: always with + or -)."""
    magnitude = abs(value)
    plus = "+" if sign else ""
    if magnitude >= 100:
        return f"{value:{plus}.1f}"
    if magnitude >= 1:
        return f"{value:{plus}.2f}"
    return f"{value:{plus}.4f}"


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``mean ± std`` with a precision suited to the magnitude; empty when missing."""
    if mean is None:
        return ""
    return f"{format_number(mean)} \u00b1 {format_number(std or 0.0)}"


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary JSON written by ``markup2im evaluate``; DataError naming the file if not one."""
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: summary file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON summary ({exc})") from exc
    if not isinstance(summary, dict) or "count" not in summary:
        raise DataError(f"{path}: not an evaluate summary (no 'count')")
    for metric in METRICS:
        entry = summary.get(metric)
        if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
            raise DataError(f"{path}: summary has no mean/std for {metric!r}")
        # summaries written before the blank reference existed have no "blank"
        blank = summary.get("blank", {metric: {"mean": None, "std": None}})
        entry = blank.get(metric) if isinstance(blank, dict) else None
        if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
            raise DataError(f"{path}: summary has no blank-page mean/std for {metric!r}")
    return summary


def _metric_title(metric: str) -> str:
    return CLIP_TITLE if metric == CLIP else METRIC_TITLES[metric]


def _table_row(label: str, summary: dict[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """One row of the metrics table (its columns: see :func:`metrics_table`)."""
    dataset, method = split_label(label)
    row: dict[str, Any] = {
        "dataset": dataset,
        "method": method,
        "count": summary["count"],
        "missing_predictions": summary.get("missing_predictions_count", 0),
        "missing_gold": summary.get("missing_gold_count", 0),
    }
    blank = summary.get("blank", {})
    for metric in metrics:
        entry = summary.get(metric, {})
        row[metric] = format_mean_std(entry.get("mean"), entry.get("std"))
    for metric in metrics:
        entry = blank.get(metric, {})
        row[f"blank_{metric}"] = format_mean_std(entry.get("mean"), entry.get("std"))
    row["dtw_ratio_to_blank"] = summary.get("dtw_ratio_to_blank")
    for metric in metrics:
        for stat in ("mean", "std", "median"):
            row[f"{metric}_{stat}"] = summary.get(metric, {}).get(stat)
    for metric in metrics:
        for stat in ("mean", "std"):
            row[f"blank_{metric}_{stat}"] = blank.get(metric, {}).get(stat)
    return row


def _write_table_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> None:
    """The rows as a CSV (header: the first row's keys; None as an empty cell)."""
    header = list(rows[0])
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _table_page(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """The HTML page of the metrics table: the formatted cells only."""
    shown = ["dataset", "method", "count", *metrics, *(f"blank_{m}" for m in metrics)]
    titles = [
        "dataset",
        "method",
        "n",
        *(_metric_title(m) for m in metrics),
        *(f"blank page: {_metric_title(m)}" for m in metrics),
        "DTW / blank \u2193",
    ]
    ratios = [row["dtw_ratio_to_blank"] for row in rows]
    body = [
        [row[k] for k in shown] + ["" if ratio is None else format_number(ratio)]
        for row, ratio in zip(rows, ratios, strict=True)
    ]
    return table_page("Metrics (mean \u00b1 std)", titles, body)


def metrics_table(
    summaries: Labelled,
    output_csv: str | os.PathLike[str],
    output_html: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Table of dataset x method rows with ``mean ± std`` per metric (plus the plain numbers),
    next to what a blank page scores on the same gold images.

    CSV columns: dataset, method, count, missing_predictions, missing_gold, one ``mean ± std`` column
    per metric, one ``blank_<metric>`` column per metric (the blank page's ``mean ± std``),
    ``dtw_ratio_to_blank`` (below 1: the model's pages are closer to the gold than a blank one),
    then ``<metric>_mean``, ``<metric>_std``, ``<metric>_median`` and ``blank_<metric>_mean``,
    ``blank_<metric>_std``; the metrics are dtw, dtw_shift, ssim, mse, and clip when any summary
    has it (empty cells for those that do not). Blank cells are empty for summaries without a
    blank reference. The optional HTML file is a self-contained page with the formatted table.
    Returns the rows.
    """
    if not summaries:
        raise DataError("metrics_table: no summaries given")
    loaded = [(label, read_summary(path)) for label, path in summaries]
    # CLIP similarity is optional (evaluate --clip-model): a column when any run has it
    metrics = (*METRICS, CLIP) if any(CLIP in s for _label, s in loaded) else METRICS
    rows = [_table_row(label, summary, metrics) for label, summary in loaded]
    _write_table_csv(output_csv, rows)
    if output_html is not None:
        write_text(output_html, _table_page(rows, metrics))
    log.info("wrote %s (%d rows)", output_csv, len(rows))
    return rows
