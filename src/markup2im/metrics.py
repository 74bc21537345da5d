"""Image metrics of the paper (DTW, DTW with vertical shift, SSIM, pixel MSE) and the evaluator.

The definitions follow the original evaluation exactly (DESIGN.md section 8): images are read as
8-bit grayscale; ``dtw`` compares the binarised columns (ink = gray < 150) with classic dynamic time
warping under squared Euclidean column cost and reports the square root of the minimal cumulative
cost; ``dtw_shift`` uses as column cost the minimum over small vertical shifts; ``ssim`` is
scikit-image's ``structural_similarity(win_size=11, use_sample_covariance=False, data_range=255)``;
``mse`` is the pixel mean squared error on the 0..255 scale. Every summary also scores a blank
(all-white) page against the same gold images, the trivial answer a model has to beat.

The numbers come from exact, compiled kernels (:mod:`markup2im.metric_kernels`) and equal
tslearn / sewar / scikit-image to rounding (tests check 1e-9 relative).
"""

from __future__ import annotations

import concurrent.futures
import csv
import logging
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from markup2im.atomic import atomic_path, write_json
from markup2im.errors import DataError
from markup2im.images import open_image
from markup2im.metric_kernels import InkColumns, dtw_ink, kernel_array, ssim_mse

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("dtw", "dtw_shift", "ssim", "mse")
#: Direction of each metric: True when higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {"dtw": False, "dtw_shift": False, "ssim": True, "mse": False}
#: Optional column of ``evaluate_dirs`` (``clip_model``): CLIP cosine similarity, higher is better.
CLIP = "clip"
INK_THRESHOLD = 150  # gray < 150 is ink
SSIM_WINDOW = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


# ----------------------------------------------------------------------------- array helpers


def as_gray(image: Any) -> np.ndarray:
    """A 2-D uint8 array of ``image`` (PIL image, converted with ``convert("L")``, or an array)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("grayscale values must lie in 0..255")
        array = array.astype(np.uint8)
    return array


def _check_pair(pred: np.ndarray, gold: np.ndarray) -> None:
    if pred.shape != gold.shape:
        raise ValueError(f"image shapes differ: {pred.shape} vs {gold.shape}")
    if pred.size == 0:
        raise ValueError(f"empty image of shape {pred.shape}")


def max_shift(height: int) -> int:
    """Largest vertical shift tried by ``dtw_shift``: floor(0.1 * height)."""
    return height // 10


def _ink(gray: np.ndarray) -> InkColumns:
    """The ink columns (gray < INK_THRESHOLD) of an image, packed for the DTW kernels."""
    return InkColumns(gray, INK_THRESHOLD)


# ----------------------------------------------------------------------------- public metrics


def dtw(pred: Any, gold: Any) -> float:
    """DTW distance between the binarised columns of two grayscale images (lower is better)."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    return dtw_ink(_ink(a), _ink(b), 0)


def dtw_shift(pred: Any, gold: Any) -> float:
    """DTW whose column cost is the best over vertical shifts up to 10% of the height."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    return dtw_ink(_ink(a), _ink(b), max_shift(a.shape[0]))


def _ssim_and_mse(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(
            f"image of {a.shape[1]}x{a.shape[0]} is smaller than the {SSIM_WINDOW}-pixel SSIM window"
        )
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    value, err = ssim_mse(kernel_array(a), kernel_array(b), SSIM_WINDOW, c1, c2)
    return float(value), float(err)


def ssim(pred: Any, gold: Any) -> float:
    """Mean structural similarity, 11x11 uniform window, on 0..255 (higher is better)."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    return _ssim_and_mse(a, b)[0]


def mse(pred: Any, gold: Any) -> float:
    """Pixel mean squared error on the 0..255 scale (lower is better)."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    diff = a.astype(np.int64) - b.astype(np.int64)
    return float(np.sum(diff * diff)) / a.size


def compute_metrics(pred: Any, gold: Any) -> dict[str, float]:
    """All four metrics of one predicted / gold image pair."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    ink_a, ink_b = _ink(a), _ink(b)
    ssim_value, mse_value = _ssim_and_mse(a, b)
    return {
        "dtw": dtw_ink(ink_a, ink_b, 0),
        "dtw_shift": dtw_ink(ink_a, ink_b, max_shift(a.shape[0])),
        "ssim": ssim_value,
        "mse": mse_value,
    }


def blank_page(gold: Any) -> np.ndarray:
    """The all-white page of ``gold``'s size: the trivial answer every model has to beat.

    White in any mode (L, RGB, RGBA, ...) converts to gray 255, so this gray page scores exactly
    as a white page in the gold's own mode would.
    """
    return np.full(as_gray(gold).shape, DATA_RANGE, dtype=np.uint8)


def blank_metrics(gold: Any) -> dict[str, float]:
    """All four metrics of the blank page against ``gold`` (the reference of every summary)."""
    return compute_metrics(blank_page(gold), gold)


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel once in this process.

    Called before worker processes fork, so that they inherit the compiled code.
    """
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(12, 12), dtype=np.uint8)
    compute_metrics(a, a[::-1])


# ----------------------------------------------------------------------------- directory evaluator


def load_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as 8-bit grayscale (``convert("L")``); DataError naming it if unreadable
    or too large (:func:`markup2im.images.open_image`)."""
    try:
        with open_image(path, str(path)) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def list_images(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Image files directly in ``directory`` by file name (hidden and non-image files skipped)."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: image directory not found")
    return {
        p.name: p
        for p in root.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    }


def _evaluate_chunk(pairs: Sequence[tuple[str, str, str]]) -> list[tuple[str, Any]]:
    """(prediction metrics, blank-page metrics) for (name, pred path, gold path) pairs; a problem
    becomes an error message."""
    out: list[tuple[str, Any]] = []
    for name, pred_path, gold_path in pairs:
        try:
            pred = load_gray(pred_path)
            gold = load_gray(gold_path)
            if pred.shape != gold.shape:
                raise DataError(
                    f"{name}: prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but gold "
                    f"{gold_path} is {gold.shape[1]}x{gold.shape[0]} (WxH)"
                )
            try:
                out.append((name, (compute_metrics(pred, gold), blank_metrics(gold))))
            except ValueError as exc:
                raise DataError(f"{name}: {exc}") from exc
        except DataError as exc:
            out.append((name, str(exc)))
    return out


def _collect(
    batches: Iterable[list[tuple[str, Any]]],
    total: int,
    results: dict[str, tuple[dict[str, float], dict[str, float]]],
    errors: list[str],
) -> None:
    """Gather per-pair results (or error messages) while showing a progress bar."""
    from tqdm import tqdm

    with tqdm(total=total, desc="evaluate", unit="pair", dynamic_ncols=True) as bar:
        for rows in batches:
            for name, value in rows:
                if isinstance(value, str):
                    errors.append(value)
                else:
                    results[name] = value
            bar.update(len(rows))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """count, mean, std (population, ddof=0), median, min and max of ``values``."""
    if not len(values):
        return {"count": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
    }


# per file name: (the prediction's metrics, the blank page's metrics), against the same gold
_Scores = dict[str, tuple[dict[str, float], dict[str, float]]]


@dataclass(frozen=True)
class _Matched:
    """The image files of a prediction and a gold directory, paired by file name."""

    preds: dict[str, Path]
    golds: dict[str, Path]
    names: list[str]  # in both directories, sorted
    missing_predictions: list[str]  # gold images without a prediction
    missing_gold: list[str]  # predictions without a gold image


def _match_dirs(pred_dir: str | os.PathLike[str], gold_dir: str | os.PathLike[str]) -> _Matched:
    """Pair the images of two directories by name, warning about the unmatched ones;
    DataError when no name is in both."""
    preds = list_images(pred_dir)
    golds = list_images(gold_dir)
    names = sorted(set(preds) & set(golds))
    missing_predictions = sorted(set(golds) - set(preds))
    missing_gold = sorted(set(preds) - set(golds))
    if missing_predictions:
        log.warning(
            "%d gold image(s) in %s have no prediction in %s: %s",
            len(missing_predictions),
            gold_dir,
            pred_dir,
            _preview(missing_predictions),
        )
    if missing_gold:
        log.warning(
            "%d prediction(s) in %s have no gold image in %s: %s",
            len(missing_gold),
            pred_dir,
            gold_dir,
            _preview(missing_gold),
        )
    if not names:
        raise DataError(f"no image file names in common between {pred_dir} and {gold_dir}")
    return _Matched(preds, golds, names, missing_predictions, missing_gold)


def _score_pairs(pairs: Sequence[tuple[str, str, str]], workers: int | None) -> _Scores:
    """The metrics of every (name, pred path, gold path) pair and of a blank page, in
    ``workers`` processes; one DataError naming every pair that could not be scored."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    chunk = max(1, min(64, len(pairs) // (workers * 8) or 1))
    log.info("evaluating %d image pairs with %d worker(s)", len(pairs), workers)
    warm_up()
    results: _Scores = {}
    errors: list[str] = []
    parts = list(_chunks(pairs, chunk))
    if workers == 1:
        batches: Iterable[list[tuple[str, Any]]] = map(_evaluate_chunk, parts)
        _collect(batches, len(pairs), results, errors)
    else:
        methods = multiprocessing.get_all_start_methods()
        # fork lets workers inherit the compiled kernels instead of loading them again; the
        # workers start (on submit) before the progress bar starts its monitor thread
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_evaluate_chunk, part) for part in parts]
            done = (f.result() for f in concurrent.futures.as_completed(futures))
            _collect(done, len(pairs), results, errors)
    if errors:
        errors.sort()
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(f"{len(errors)} image pair(s) could not be evaluated:\n  {shown}{more}")
    return results


def _add_clip_scores(
    results: _Scores,
    matched: _Matched,
    clip_model: str,
    batch_size: int,
    device: str | None,
) -> None:
    """Add the CLIP similarity of each pair (and of its blank page) to ``results``."""
    # after the worker processes are gone: they are forked, and must not inherit torch state
    from markup2im.clip_score import clip_similarities

    names = matched.names
    scores, blank_scores = clip_similarities(
        [(matched.preds[n], matched.golds[n]) for n in names],
        clip_model,
        batch_size=batch_size,
        device=device,
    )
    for n, score, blank in zip(names, scores, blank_scores, strict=True):
        results[n][0][CLIP] = float(score)
        results[n][1][CLIP] = float(blank)


def _write_table(
    output_csv: str | os.PathLike[str],
    names: Sequence[str],
    results: _Scores,
    columns: Sequence[str],
) -> None:
    """The per-pair CSV: filename and one column per metric, values as ``repr`` (exact)."""
    with atomic_path(output_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", *columns])
            for name in names:
                writer.writerow([name, *(repr(results[name][0][m]) for m in columns)])


def _dirs_summary(
    pred_dir: str | os.PathLike[str],
    gold_dir: str | os.PathLike[str],
    matched: _Matched,
    results: _Scores,
    columns: Sequence[str],
    clip_model: str | None,
) -> dict[str, Any]:
    """The summary of :func:`evaluate_dirs`: statistics per metric, for the predictions and for
    the blank page, and the unmatched files."""
    names = matched.names
    summary: dict[str, Any] = {
        "count": len(names),
        "pred_dir": str(pred_dir),
        "gold_dir": str(gold_dir),
        "missing_predictions": matched.missing_predictions,
        "missing_predictions_count": len(matched.missing_predictions),
        "missing_gold": matched.missing_gold,
        "missing_gold_count": len(matched.missing_gold),
    }
    for metric in columns:
        summary[metric] = summarize([results[n][0][metric] for n in names])
    summary["blank"] = {m: summarize([results[n][1][m] for n in names]) for m in columns}
    summary["dtw_ratio_to_blank"] = ratio_to_blank(summary, "dtw")
    if clip_model is not None:
        summary["clip_model"] = clip_model
    return summary


def evaluate_dirs(
    pred_dir: str | os.PathLike[str],
    gold_dir: str | os.PathLike[str],
    output_csv: str | os.PathLike[str],
    summary_json: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    clip_model: str | None = None,
    clip_batch_size: int = 32,
    device: str | None = "auto",
) -> dict[str, Any]:
    """Evaluate every prediction against the gold image of the same file name.

    Writes ``output_csv`` (filename, dtw, dtw_shift, ssim, mse; one row per pair, sorted by file
    name) and, if given, ``summary_json``: ``count``, per metric ``{count, mean, std, median, min,
    max}``, the unmatched files (``missing_predictions``: gold without prediction,
    ``missing_gold``: prediction without gold) with their counts, ``blank``: the same statistics
    per metric for a blank page (:func:`blank_page`) against the same gold images, and
    ``dtw_ratio_to_blank``: mean dtw / mean blank dtw (below 1: closer to the gold than a blank
    page; None when every gold image is blank). Returns the summary.
    With ``clip_model`` (a CLIP hub name or local directory) the CSV gets a ``clip`` column, the
    CLIP cosine similarity of each pair (:mod:`markup2im.clip_score`, ``clip_batch_size`` images
    at a time on ``device``), and the summary a ``clip`` entry (also under ``blank``) and
    ``clip_model``; without it nothing of CLIP is loaded.
    Unreadable images or pairs of different sizes raise one DataError naming all of them.
    """
    matched = _match_dirs(pred_dir, gold_dir)
    names = matched.names
    pairs = [(n, str(matched.preds[n]), str(matched.golds[n])) for n in names]
    results = _score_pairs(pairs, workers)
    columns: tuple[str, ...] = METRICS
    if clip_model is not None:
        _add_clip_scores(results, matched, clip_model, clip_batch_size, device)
        columns = (*METRICS, CLIP)
    _write_table(output_csv, names, results, columns)
    summary = _dirs_summary(pred_dir, gold_dir, matched, results, columns, clip_model)
    if summary_json is not None:
        write_json(summary_json, summary)
    log.info(
        "%d pairs: %s; blank page: %s",
        len(names),
        ", ".join(f"{m} {summary[m]['mean']:.4g} ± {summary[m]['std']:.3g}" for m in columns),
        ", ".join(f"{m} {summary['blank'][m]['mean']:.4g}" for m in columns),
    )
    return summary


def ratio_to_blank(summary: dict[str, Any], metric: str) -> float | None:
    """Mean ``metric`` of a summary over its blank page's mean (None when that mean is 0)."""
    blank = summary["blank"][metric]["mean"]
    return summary[metric]["mean"] / blank if blank else None


def _preview(names: Sequence[str], limit: int = 10) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... (+{len(names) - limit})" if len(names) > limit else "")
