"""Paired comparison of two runs over the same test images (scheduled sampling minus baseline).

Both runs score the same gold images, so the per-image difference (treatment - baseline) removes
the spread between easy and hard images that the per-run mean ± std still contains. For each
metric this module reports the mean difference with a seeded percentile-bootstrap interval (images
resampled with replacement, the same resamples for every metric) and the treatment's win rate: the
fraction of images on which it scores better (lower dtw, dtw_shift and mse, higher ssim), ties
counting half. Inputs are the per-image ``metrics.csv`` files of ``markup2im evaluate``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from markup2im.atomic import atomic_path, write_text
from markup2im.errors import ConfigError, DataError
from markup2im.figures.html import table_page
from markup2im.figures.tables import METRIC_TITLES, Labelled, format_number, split_label
from markup2im.metrics import HIGHER_IS_BETTER, METRICS
from markup2im.names import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, PAPER_LABELS

log = logging.getLogger(__name__)

#: Columns of a paired CSV, one row per metric.
PAIRED_COLUMNS: tuple[str, ...] = (
    "metric",
    "higher_is_better",
    "n",
    "baseline_mean",
    "treatment_mean",
    "mean_difference",
    "ci_low",
    "ci_high",
    "win_rate",
    "confidence",
    "resamples",
    "seed",
)
# bootstrap means are drawn in blocks of at most this many gathered values (about 32 MB)
_BLOCK_VALUES = 1 << 22


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A per-image metrics CSV as {filename: values in METRICS order}; DataError naming the file
    and line of a missing column, a repeated file name or a cell that is not a finite number."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("filename", *METRICS) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            rows: dict[str, np.ndarray] = {}
            for record in reader:
                where = f"{path}, line {reader.line_num}"
                name = record["filename"]
                if name in rows:
                    raise DataError(f"{where}: file name {name!r} appears twice")
                values = []
                for metric in METRICS:
                    try:
                        value = float(record[metric])
                    except (TypeError, ValueError):
                        value = math.nan
                    if not math.isfinite(value):
                        raise DataError(f"{where}: {metric} is {record[metric]!r}, not a number")
                    values.append(value)
                rows[name] = np.array(values, dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: metrics file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _preview(names: Sequence[str], limit: int = 5) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def paired_values(
    baseline_csv: str | os.PathLike[str], treatment_csv: str | os.PathLike[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """File names (sorted) and the (n, metrics) values of both runs, matched by file name.

    The two files must score the same images: a comparison over different images is not paired.
    """
    baseline, treatment = read_metrics_csv(baseline_csv), read_metrics_csv(treatment_csv)
    if baseline.keys() != treatment.keys():
        only_base = sorted(baseline.keys() - treatment.keys())
        only_treat = sorted(treatment.keys() - baseline.keys())
        parts = [
            f"{len(names)} only in {path}: {_preview(names)}"
            for names, path in ((only_base, baseline_csv), (only_treat, treatment_csv))
            if names
        ]
        raise DataError(
            f"{baseline_csv} and {treatment_csv} score different images ({'; '.join(parts)})"
        )
    names = sorted(baseline)
    return names, np.stack([baseline[n] for n in names]), np.stack([treatment[n] for n in names])


def bootstrap_mean_interval(
    values: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean of each column of ``values`` (n, k).

    Every resample draws n rows with replacement, the same rows for all columns. Deterministic for
    a given seed, number of rows and number of resamples.
    """
    if values.ndim != 2 or not len(values):
        raise ValueError(f"expected a non-empty (n, k) array, got shape {values.shape}")
    if resamples < 1:
        raise ConfigError(f"resamples (--resamples) must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence (--confidence) must lie between 0 and 1, got {confidence}")
    n, k = values.shape
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, k), dtype=np.float64)
    block = max(1, _BLOCK_VALUES // (n * k))
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        rows = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[rows].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return low, high


def win_rate(differences: np.ndarray, higher_is_better: bool) -> float:
    """Fraction of the treatment - baseline ``differences`` in the treatment's favour, ties half."""
    better = differences > 0 if higher_is_better else differences < 0
    # one division of integers, so that 3 wins and 2 ties of 5 give exactly 0.8
    return float(2 * np.count_nonzero(better) + np.count_nonzero(differences == 0)) / (
        2 * differences.size
    )


def paired_comparison(
    baseline_csv: str | os.PathLike[str],
    treatment_csv: str | os.PathLike[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> list[dict[str, Any]]:
    """One row per metric (columns PAIRED_COLUMNS): treatment - baseline over the same images."""
    _names, base, treat = paired_values(baseline_csv, treatment_csv)
    differences = treat - base
    low, high = bootstrap_mean_interval(differences, resamples, seed, confidence)
    rows = []
    for j, metric in enumerate(METRICS):
        rows.append(
            {
                "metric": metric,
                "higher_is_better": HIGHER_IS_BETTER[metric],
                "n": len(differences),
                "baseline_mean": float(base[:, j].mean()),
                "treatment_mean": float(treat[:, j].mean()),
                "mean_difference": float(differences[:, j].mean()),
                "ci_low": float(low[j]),
                "ci_high": float(high[j]),
                "win_rate": win_rate(differences[:, j], HIGHER_IS_BETTER[metric]),
                "confidence": confidence,
                "resamples": resamples,
                "seed": seed,
            }
        )
    return rows


def _write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Sequence[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(header))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


def format_interval(row: dict[str, Any]) -> str:
    """``mean [low, high]`` of a paired row, with a sign, at a precision suited to the magnitude."""
    low, high = format_number(row["ci_low"]), format_number(row["ci_high"])
    return f"{format_number(row['mean_difference'], sign=True)} [{low}, {high}]"


def _shown(row: dict[str, Any]) -> list[Any]:
    """The formatted cells of one paired row: metric, n, both means, difference, win rate."""
    return [
        METRIC_TITLES[row["metric"]],
        row["n"],
        format_number(row["baseline_mean"]),
        format_number(row["treatment_mean"]),
        format_interval(row),
        f"{100 * row['win_rate']:.1f}%",
    ]


def _titles(baseline_label: str, treatment_label: str, confidence: float | None) -> list[str]:
    interval = f"{100 * confidence:g}% interval" if confidence is not None else "interval"
    return [
        "metric",
        "n",
        f"{baseline_label} mean",
        f"{treatment_label} mean",
        f"{treatment_label} \u2212 {baseline_label} [{interval}]",
        f"{treatment_label} better",
    ]


def compare_runs(
    baseline_csv: str | os.PathLike[str],
    treatment_csv: str | os.PathLike[str],
    output_csv: str | os.PathLike[str],
    output_html: str | os.PathLike[str] | None = None,
    title: str | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    labels: tuple[str, str] = PAPER_LABELS,
) -> list[dict[str, Any]]:
    """Write the paired comparison of two metrics CSVs (and, if given, an HTML page of it).

    ``labels`` name the baseline and the treatment in the page. Returns the rows.
    """
    rows = paired_comparison(baseline_csv, treatment_csv, resamples, seed, confidence)
    _write_csv(output_csv, PAIRED_COLUMNS, rows)
    if output_html is not None:
        heading = title or f"{labels[1]} \u2212 {labels[0]}, paired over the same images"
        body = [_shown(row) for row in rows]
        write_text(output_html, table_page(heading, _titles(*labels, confidence), body))
    log.info(
        "%d paired images: %s",
        rows[0]["n"],
        ", ".join(f"{r['metric']} {format_interval(r)}, wins {r['win_rate']:.2f}" for r in rows),
    )
    return rows


def read_paired_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A paired CSV written by :func:`compare_runs`, numbers parsed; DataError naming the file."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in PAIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not a paired CSV (missing {', '.join(missing)})")
            records = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: paired file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    if not records:
        raise DataError(f"{path}: no rows")
    kinds: dict[str, Any] = {"metric": str, "higher_is_better": "True".__eq__}
    kinds.update(n=int, resamples=int, seed=int)
    rows = []
    for number, record in enumerate(records, start=2):
        try:
            row = {key: kinds.get(key, float)(record[key]) for key in PAIRED_COLUMNS}
        except ValueError as exc:
            raise DataError(f"{path}, line {number}: {exc}") from exc
        if row["metric"] not in METRIC_TITLES:
            raise DataError(f"{path}, line {number}: unknown metric {row['metric']!r}")
        rows.append(row)
    return rows


def paired_table(
    paired_csvs: Labelled,
    output_csv: str | os.PathLike[str],
    output_html: str | os.PathLike[str] | None = None,
    labels: tuple[str, str] = PAPER_LABELS,
) -> list[dict[str, Any]]:
    """All paired comparisons in one table: columns dataset, sampler, then PAIRED_COLUMNS.

    Each input is labelled ``dataset/sampler``. Returns the rows.
    """
    if not paired_csvs:
        raise DataError("paired_table: no paired CSVs given")
    rows = []
    for label, path in paired_csvs:
        dataset, sampler = split_label(str(label))
        rows += [{"dataset": dataset, "sampler": sampler, **r} for r in read_paired_csv(path)]
    _write_csv(output_csv, ("dataset", "sampler", *PAIRED_COLUMNS), rows)
    if output_html is not None:
        confidences = {r["confidence"] for r in rows}
        confidence = confidences.pop() if len(confidences) == 1 else None
        titles = ["dataset", "sampler", *_titles(*labels, confidence)]
        body = [[r["dataset"], r["sampler"], *_shown(r)] for r in rows]
        heading = f"Paired comparison: {labels[1]} \u2212 {labels[0]}"
        write_text(output_html, table_page(heading, titles, body))
    log.info("wrote %s (%d rows)", output_csv, len(rows))
    return rows
