"""Pictures for the report: denoising GIFs, side-by-side comparison GIFs, sample grids, the metrics
table, metric distribution plots, training-loss curves and self-contained HTML wrappers.

Everything reads files written by other steps (frames from ``generate``, summaries and per-image
CSVs from ``evaluate``, ``train_log.csv`` from ``train``) and writes its output atomically. Small
images are enlarged by an integer factor with nearest-neighbour resampling, so that a 64x64 table
stays crisp and readable. Matplotlib is used through ``Figure`` objects with the Agg canvas (no
global pyplot state, no display needed).
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from markup2im.atomic import atomic_path, write_text
from markup2im.errors import ConfigError, DataError
from markup2im.metrics import CLIP, HIGHER_IS_BETTER, METRICS, list_images

log = logging.getLogger(__name__)

_NAMES = {"dtw": "DTW", "dtw_shift": "DTW (shift)", "ssim": "SSIM", "mse": "MSE"}
_ARROW = {True: "\u2191", False: "\u2193"}  # higher / lower is better
METRIC_TITLES = {m: f"{_NAMES.get(m, m)} {_ARROW[HIGHER_IS_BETTER[m]]}" for m in METRICS}
CLIP_TITLE = f"CLIP {_ARROW[True]}"
TARGET_SIDE = 192  # small images are enlarged until their longer side reaches at least this
PAD = 4
LABEL_SIZE = 14  # pixels
BACKGROUND = 255
LABEL_COLOR = 0

Labelled = Sequence[tuple[str, str | os.PathLike[str]]]


# ----------------------------------------------------------------------------- image helpers


def upscale_factor(size: tuple[int, int], target: int = TARGET_SIDE) -> int:
    """Integer enlargement that brings the longer side of ``size`` to at least ``target``."""
    return max(1, math.ceil(target / max(size)))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """Enlarge by an integer factor with nearest-neighbour pixels (no blur)."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, at a readable size where FreeType is available."""
    try:
        return ImageFont.load_default(size=LABEL_SIZE)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: bitmap font
        return ImageFont.load_default()


def _text_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom) + 1


def _label_band_height() -> int:
    return _text_height(_font()) + 2 * PAD


def _open(path: str | os.PathLike[str]) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def _common_mode(images: Sequence[Image.Image]) -> str:
    return "L" if all(im.mode == "L" for im in images) else "RGB"


def _fill(mode: str) -> int | tuple[int, int, int]:
    return BACKGROUND if mode == "L" else (BACKGROUND,) * 3


def _ink(mode: str) -> int | tuple[int, int, int]:
    return LABEL_COLOR if mode == "L" else (LABEL_COLOR,) * 3


def _draw_label(draw: ImageDraw.ImageDraw, box: tuple[int, int, int], text: str, mode: str) -> None:
    """Centre ``text`` horizontally in the band starting at (x, y) of width w (box = x, y, w)."""
    x, y, width = box
    font = _font()
    text_width = draw.textlength(text, font=font)
    while text_width > width and len(text) > 1:  # too wide for its panel: shorten with an ellipsis
        text = text[:-2] + "\u2026"
        text_width = draw.textlength(text, font=font)
    draw.text((x + max(0, (width - text_width) / 2), y + PAD), text, font=font, fill=_ink(mode))


def frame_number(path: Path) -> int:
    """The step number of a frame file (the last group of digits in its name), -1 if none."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def list_frames(frames_dir: str | os.PathLike[str]) -> list[Path]:
    """Frame images of ``frames_dir`` in step order; DataError if missing or empty."""
    root = Path(frames_dir)
    if not root.is_dir():
        raise DataError(f"{root}: frames directory not found")
    frames = list(list_images(root).values())
    if not frames:
        raise DataError(f"{root}: no frame images (expected step_<NNNN>.png files)")
    return sorted(frames, key=lambda p: (frame_number(p), p.name))


def select_frames(frames: Sequence[Any], every: int) -> list[Any]:
    """Every ``every``-th frame starting with the first, always ending with the last one."""
    if every < 1:
        raise ConfigError(f"every (--every) must be >= 1, got {every}")
    chosen = list(frames[::every])
    if chosen[-1] != frames[-1]:
        chosen.append(frames[-1])
    return chosen


def save_gif(
    frames: Sequence[Image.Image],
    output: str | os.PathLike[str],
    frame_ms: int,
    final_hold_ms: int,
) -> None:
    """Write an endlessly looping GIF; the last frame stays ``final_hold_ms`` on screen."""
    if not frames:
        raise DataError(f"{output}: no frames to write")
    durations = [int(frame_ms)] * (len(frames) - 1) + [int(final_hold_ms)]
    with atomic_path(output) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=list(frames[1:]),
            duration=durations,
            loop=0,
            disposal=1,
        )
    log.info("wrote %s (%d frames)", output, len(frames))


# ----------------------------------------------------------------------------- GIFs


def denoise_gif(
    frames_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    every: int = 1,
    frame_ms: int = 80,
    final_hold_ms: int = 2000,
    scale: int | None = None,
) -> int:
    """GIF of one example's denoising (x0 predictions over the steps). Returns the frame count."""
    paths = select_frames(list_frames(frames_dir), every)
    return frames_gif([_open(p) for p in paths], output, 1, frame_ms, final_hold_ms, scale)


def frames_gif(
    images: Sequence[Image.Image],
    output: str | os.PathLike[str],
    every: int = 1,
    frame_ms: int = 80,
    final_hold_ms: int = 2000,
    scale: int | None = None,
) -> int:
    """``denoise_gif`` of frames in memory (in step order). Returns the frame count."""
    if not images:
        raise DataError(f"{output}: no frames to write")
    images = [images[i] for i in select_frames(range(len(images)), every)]
    factor = scale or upscale_factor(images[0].size)
    mode = _common_mode(images)
    frames = [enlarge(im.convert(mode), factor) for im in images]
    save_gif(frames, output, frame_ms, final_hold_ms)
    return len(frames)


def compare_gif(
    gold: str | os.PathLike[str],
    runs: Labelled,
    output: str | os.PathLike[str],
    every: int = 1,
    frame_ms: int = 80,
    final_hold_ms: int = 2000,
    scale: int | None = None,
) -> int:
    """Side-by-side GIF: the gold image, then each run's denoising frames, each under its label.

    Runs with fewer frames hold their final image. Returns the number of GIF frames.
    """
    if not runs:
        raise DataError("compare_gif: no frame directories given")
    gold_image = _open(gold)
    sequences = [[_open(p) for p in select_frames(list_frames(d), every)] for _label, d in runs]
    for (label, directory), sequence in zip(runs, sequences, strict=True):
        if sequence[0].size != gold_image.size:
            raise DataError(
                f"{directory} ({label}): frames are {sequence[0].width}x{sequence[0].height}, "
                f"gold {gold} is {gold_image.width}x{gold_image.height}"
            )
    mode = _common_mode([gold_image] + [im for seq in sequences for im in seq])
    factor = scale or upscale_factor(gold_image.size)
    labels = ["gold"] + [label for label, _ in runs]
    panel_w, panel_h = gold_image.width * factor, gold_image.height * factor
    band = _label_band_height()
    width = len(labels) * panel_w + (len(labels) + 1) * PAD
    height = band + panel_h + PAD
    base = Image.new(mode, (width, height), _fill(mode))
    draw = ImageDraw.Draw(base)
    for k, label in enumerate(labels):
        _draw_label(draw, (PAD + k * (panel_w + PAD), 0, panel_w), label, mode)
    base.paste(enlarge(gold_image.convert(mode), factor), (PAD, band))
    frames = []
    for step in range(max(len(seq) for seq in sequences)):
        frame = base.copy()
        for k, sequence in enumerate(sequences, start=1):
            image = sequence[min(step, len(sequence) - 1)]
            frame.paste(enlarge(image.convert(mode), factor), (PAD + k * (panel_w + PAD), band))
        frames.append(frame)
    save_gif(frames, output, frame_ms, final_hold_ms)
    return len(frames)


# ----------------------------------------------------------------------------- sample grid


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
    common = set(list_images(gold_root))
    for _label, directory in preds:
        common &= set(list_images(directory))
    chosen = [n for n in names if n in common] if names else sorted(common)
    chosen = chosen[: max(1, limit)]
    if not chosen:
        raise DataError(
            f"no image file names common to {gold_root} and " + ", ".join(str(d) for _l, d in preds)
        )
    columns = [("gold", gold_root)] + [(label, Path(d)) for label, d in preds]
    rows = [[_open(directory / name) for _label, directory in columns] for name in chosen]
    size = rows[0][0].size
    for name, row in zip(chosen, rows, strict=True):
        for (label, directory), image in zip(columns, row, strict=True):
            if image.size != size:
                raise DataError(
                    f"{directory / name} ({label}) is {image.width}x{image.height}, "
                    f"expected {size[0]}x{size[1]} like the other grid images"
                )
    mode = _common_mode([im for row in rows for im in row])
    factor = scale or upscale_factor(size)
    cell_w, cell_h = size[0] * factor, size[1] * factor
    band = _label_band_height()
    width = len(columns) * cell_w + (len(columns) + 1) * PAD
    height = band + len(rows) * (cell_h + PAD)
    grid = Image.new(mode, (width, height), _fill(mode))
    draw = ImageDraw.Draw(grid)
    for k, (label, _d) in enumerate(columns):
        _draw_label(draw, (PAD + k * (cell_w + PAD), 0, cell_w), label, mode)
    for r, row in enumerate(rows):
        for k, image in enumerate(row):
            position = (PAD + k * (cell_w + PAD), band + r * (cell_h + PAD))
            grid.paste(enlarge(image.convert(mode), factor), position)
    with atomic_path(output) as tmp:
        grid.save(tmp, format="PNG")
    log.info("wrote %s (%d examples x %d columns)", output, len(rows), len(columns))
    return chosen


# ----------------------------------------------------------------------------- metrics table


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
    blank reference. The
    optional HTML file is a self-contained page with the formatted table. Returns the rows.
    """
    if not summaries:
        raise DataError("metrics_table: no summaries given")
    loaded = [(label, read_summary(path)) for label, path in summaries]
    # CLIP similarity is optional (evaluate --clip-model): a column when any run has it
    metrics = (*METRICS, CLIP) if any(CLIP in s for _label, s in loaded) else METRICS
    rows = []
    for label, summary in loaded:
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
        rows.append(row)
    header = list(rows[0])
    with atomic_path(output_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
    if output_html is not None:
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
        write_text(output_html, table_page("Metrics (mean \u00b1 std)", titles, body))
    log.info("wrote %s (%d rows)", output_csv, len(rows))
    return rows


# ----------------------------------------------------------------------------- plots


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

    def number(cell: str | None) -> float:
        try:
            return float(cell) if cell not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {c: np.array([number(r.get(c)) for r in records], dtype=np.float64) for c in fields}


def _figure(width: float, height: float) -> Any:
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


TRAIN_LOG_COLUMNS = ("step", "epoch", "loss", "lr", "ss_prob", "m", "seconds")


def read_train_log(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A ``train_log.csv``: rows sorted by step, the last row kept for repeated steps (resumes)."""
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


# ----------------------------------------------------------------------------- HTML wrappers


def _html_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}"
    "table{border-collapse:collapse}"
    "th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}"
    "th{background:#eee}"
    "img{max-width:100%;image-rendering:pixelated}"
)


def table_page(title: str, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A self-contained HTML page holding one table (cells escaped)."""
    return _html_page(title, _html_table(header, rows))


def _html_page(title: str, body: str) -> str:
    escaped = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escaped}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escaped}</h1>\n{body}\n</body>\n</html>\n"
    )


_MIME = {
    ".gif": "image/gif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}


def html_page(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    title: str | None = None,
) -> None:
    """A self-contained HTML page showing ``input_path``: an image embedded as base64, or a CSV
    rendered as a table (for ``snakemake --report``, which shows HTML files inline)."""
    source = Path(input_path)
    if not source.is_file():
        raise DataError(f"{source}: input file not found")
    suffix = source.suffix.lower()
    heading = title or source.name
    if suffix in _MIME:
        data = base64.b64encode(source.read_bytes()).decode("ascii")
        body = f'<img alt="{html.escape(source.name)}" src="data:{_MIME[suffix]};base64,{data}">'
    elif suffix == ".csv":
        try:
            with open(source, newline="", encoding="utf-8") as handle:
                records = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{source}: cannot read CSV ({exc})") from exc
        if not records:
            raise DataError(f"{source}: empty CSV")
        body = _html_table(records[0], records[1:])
    else:
        raise DataError(f"{source}: cannot wrap {suffix or 'extension-less'} files (gif, png, csv)")
    write_text(output, _html_page(heading, body))
    log.info("wrote %s", output)
