"""Image metrics of the paper (DTW, DTW with vertical shift, SSIM, pixel MSE) and the evaluator.

The definitions follow the original evaluation exactly (DESIGN.md section 8): images are read as
8-bit grayscale; ``dtw`` compares the binarised columns (ink = gray < 150) with classic dynamic time
warping under squared Euclidean column cost and reports the square root of the minimal cumulative
cost; ``dtw_shift`` uses as column cost the minimum over small vertical shifts; ``ssim`` is
scikit-image's ``structural_similarity(win_size=11, use_sample_covariance=False, data_range=255)``;
``mse`` is the pixel mean squared error on the 0..255 scale. Every summary also scores a blank
(all-white) page against the same gold images, the trivial answer a model has to beat.

The implementation is exact integer arithmetic wherever the definition allows it, so the numbers
equal tslearn / sewar / scikit-image to rounding (tests check 1e-9 relative), but it is fast: ink
columns are packed into 64-bit words so that a squared distance between binary columns is a
popcount of their XOR, repeated columns (blank space) are costed once, and the DTW, SSIM and MSE
loops are compiled with numba (cached on disk, so a new process only loads them).
"""

from __future__ import annotations

import concurrent.futures
import csv
import logging
import math
import multiprocessing
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import config as numba_config
from numba.extending import intrinsic
from PIL import Image

from markup2im.atomic import atomic_path, write_json
from markup2im.errors import DataError

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


# ----------------------------------------------------------------------------- compiled kernels


def _choose_cache_dir() -> None:
    """Make sure numba can cache the compiled kernels (compiling costs seconds per process).

    Numba caches next to this file, or in a user cache directory; when neither is writable (a
    read-only install, a read-only home in a job) a directory under the temp dir is used.
    """
    if numba_config.CACHE_DIR or os.access(Path(__file__).parent, os.W_OK):
        return
    bases = [os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", tempfile.gettempdir()]
    for base in bases:
        target = Path(base) / f"markup2im-numba-{os.getuid() if hasattr(os, 'getuid') else 0}"
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(target, os.W_OK):
            numba_config.CACHE_DIR = str(target)
            return


_choose_cache_dir()  # before the decorators below pick their cache locations


@intrinsic
def _popcount(typingctx: Any, value: Any) -> Any:
    """Number of set bits of an integer (one machine instruction where the CPU has one)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return value(value), codegen


@njit(cache=True, nogil=True)
def _min_shift_costs(words_a: np.ndarray, words_b: np.ndarray) -> np.ndarray:
    """Cost matrix ``[i, j] = min_s popcount(a_i,s XOR b_j,s)`` over packed shifted columns.

    ``words_a`` is (n, shifts, words) and ``words_b`` (m, shifts, words), uint64. With a single shift
    this is the plain squared Euclidean distance between binary columns.
    """
    n, n_shifts, n_words = words_a.shape
    m = words_b.shape[0]
    out = np.empty((n, m), dtype=np.int64)
    for i in range(n):
        for j in range(m):
            best = np.int64(1) << 62
            for s in range(n_shifts):
                c = np.int64(0)
                for k in range(n_words):
                    c += np.int64(_popcount(words_a[i, s, k] ^ words_b[j, s, k]))
                if c < best:
                    best = c
            out[i, j] = best
    return out


@njit(cache=True, nogil=True)
def _dtw_cumulative(cost: np.ndarray, index_a: np.ndarray, index_b: np.ndarray) -> np.int64:
    """Minimal cumulative cost of classic DTW with steps (1,0), (0,1), (1,1) and no window.

    The local cost of (i, j) is ``cost[index_a[i], index_b[j]]`` (costs of distinct columns only).
    """
    n = index_a.shape[0]
    m = index_b.shape[0]
    prev = np.empty(m, dtype=np.int64)
    cur = np.empty(m, dtype=np.int64)
    row = cost[index_a[0]]
    acc = np.int64(0)
    for j in range(m):
        acc += row[index_b[j]]
        prev[j] = acc
    for i in range(1, n):
        row = cost[index_a[i]]
        cur[0] = prev[0] + row[index_b[0]]
        for j in range(1, m):
            best = prev[j - 1]
            if prev[j] < best:
                best = prev[j]
            if cur[j - 1] < best:
                best = cur[j - 1]
            cur[j] = best + row[index_b[j]]
        prev, cur = cur, prev
    return prev[m - 1]


@njit(cache=True, nogil=True)
def _ssim_mse(x: np.ndarray, y: np.ndarray, win: int, c1: float, c2: float) -> tuple[float, float]:
    """Mean SSIM over all valid ``win`` x ``win`` windows (uniform weights, population
    covariance) and the pixel MSE, of two uint8 images of the same shape.

    Window sums are exact integers (running sums down the columns, then along the row), so every
    statistic comes from exact numerators with one rounding, matching scikit-image to ~1e-13.
    """
    h, w = x.shape
    # per-column sums over the current band of ``win`` rows
    cx = np.zeros(w, dtype=np.int64)
    cy = np.zeros(w, dtype=np.int64)
    cxx = np.zeros(w, dtype=np.int64)
    cyy = np.zeros(w, dtype=np.int64)
    cxy = np.zeros(w, dtype=np.int64)
    n = np.int64(win * win)
    # numerator and denominator of a window's SSIM are both scaled by n^4, which leaves the
    # ratio unchanged and keeps every term an exact integer up to the two constants
    k1 = c1 * float(n * n)
    k2 = c2 * float(n * n)
    sq_err = np.int64(0)
    total = 0.0
    for r in range(h):
        for c in range(w):
            vx = np.int64(x[r, c])
            vy = np.int64(y[r, c])
            d = vx - vy
            sq_err += d * d
            cx[c] += vx
            cy[c] += vy
            cxx[c] += vx * vx
            cyy[c] += vy * vy
            cxy[c] += vx * vy
            if r >= win:
                ox = np.int64(x[r - win, c])
                oy = np.int64(y[r - win, c])
                cx[c] -= ox
                cy[c] -= oy
                cxx[c] -= ox * ox
                cyy[c] -= oy * oy
                cxy[c] -= ox * oy
        if r < win - 1:
            continue
        wx = np.int64(0)
        wy = np.int64(0)
        wxx = np.int64(0)
        wyy = np.int64(0)
        wxy = np.int64(0)
        for c in range(w):
            wx += cx[c]
            wy += cy[c]
            wxx += cxx[c]
            wyy += cyy[c]
            wxy += cxy[c]
            if c >= win:
                wx -= cx[c - win]
                wy -= cy[c - win]
                wxx -= cxx[c - win]
                wyy -= cyy[c - win]
                wxy -= cxy[c - win]
            if c >= win - 1:
                pxy = wx * wy
                pxx = wx * wx
                pyy = wy * wy
                num = (2.0 * float(pxy) + k1) * (2.0 * float(n * wxy - pxy) + k2)
                den = (float(pxx + pyy) + k1) * (float(n * (wxx + wyy) - pxx - pyy) + k2)
                total += num / den
    count = (h - win + 1) * (w - win + 1)
    return total / count, float(sq_err) / (h * w)


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


def _kernel_array(array: np.ndarray) -> np.ndarray:
    """C-contiguous and writeable, so that every call matches the one compiled signature
    (read-only arrays, e.g. from ``np.asarray(PIL image)``, would trigger a new compilation)."""
    return np.require(array, requirements=["C", "W"])


def _check_pair(pred: np.ndarray, gold: np.ndarray) -> None:
    if pred.shape != gold.shape:
        raise ValueError(f"image shapes differ: {pred.shape} vs {gold.shape}")
    if pred.size == 0:
        raise ValueError(f"empty image of shape {pred.shape}")


def max_shift(height: int) -> int:
    """Largest vertical shift tried by ``dtw_shift``: floor(0.1 * height)."""
    return height // 10


@njit(cache=True, nogil=True)
def _pack_ink(gray: np.ndarray, threshold: int) -> np.ndarray:
    """Ink columns of a uint8 (H, W) image as bit sets: (W, ceil(H / 64)) uint64, row r of a
    column at bit r % 64 of word r // 64, 1 where gray < threshold."""
    h, w = gray.shape
    n_words = max(1, (h + 63) // 64)
    out = np.zeros((w, n_words), dtype=np.uint64)
    for r in range(h):
        k = r // 64
        bit = np.uint64(1) << np.uint64(r % 64)
        for c in range(w):
            if gray[r, c] < threshold:
                out[c, k] |= bit
    return out


@njit(cache=True, nogil=True)
def _shift_words(words: np.ndarray, height: int, max_s: int, move: bool) -> np.ndarray:
    """For every vertical shift s in [-max_s, max_s]: (n, 2*max_s+1, words) bit sets holding,
    at row r, bit r + s of the column (``move``) or bit r (not ``move``), for the rows r where
    both r and r + s lie inside the image, and 0 elsewhere."""
    n, n_words = words.shape
    n_shifts = 2 * max_s + 1
    out = np.zeros((n, n_shifts, n_words), dtype=np.uint64)
    mask = np.zeros(n_words, dtype=np.uint64)
    for t in range(n_shifts):
        s = t - max_s
        lo = max(0, -s)
        hi = min(height, height - s)
        for k in range(n_words):
            mask[k] = 0
        for r in range(lo, hi):  # rows of the overlap
            mask[r // 64] |= np.uint64(1) << np.uint64(r % 64)
        step = s if move else 0
        q = abs(step) // 64  # the move in whole words and remaining bits
        b = np.uint64(abs(step) % 64)
        for i in range(n):
            for k in range(n_words):
                v = np.uint64(0)
                if step >= 0:  # out bit r = in bit r + step: towards lower bits
                    if k + q < n_words:
                        v = words[i, k + q] >> b
                    if b > 0 and k + q + 1 < n_words:
                        v |= words[i, k + q + 1] << (np.uint64(64) - b)
                else:  # out bit r = in bit r - |step|: towards higher bits
                    if k - q >= 0:
                        v = words[i, k - q] << b
                    if b > 0 and k - q - 1 >= 0:
                        v |= words[i, k - q - 1] >> (np.uint64(64) - b)
                out[i, t, k] = v & mask[k]
    return out


@njit(cache=True, nogil=True)
def _distinct_words(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``words`` (n, k) and, for each row, the index of its distinct row.

    An open-addressing hash table of row hashes; rows are compared in full, so it is exact.
    """
    n, n_words = words.shape
    capacity = 1
    while capacity < 2 * n:
        capacity *= 2
    table = np.empty(capacity, dtype=np.int64)  # distinct value stored in each slot, -1: free
    for slot in range(capacity):
        table[slot] = -1
    index = np.empty(n, dtype=np.int64)
    reps = np.empty(n, dtype=np.int64)  # a row holding each distinct value
    n_reps = 0
    for i in range(n):
        h = np.uint64(14695981039346656037)
        for k in range(n_words):
            h = (h ^ words[i, k]) * np.uint64(1099511628211)
            h ^= h >> np.uint64(29)
        slot = np.int64(h & np.uint64(capacity - 1))
        while True:
            d = table[slot]
            if d < 0:  # a new value
                table[slot] = n_reps
                reps[n_reps] = i
                index[i] = n_reps
                n_reps += 1
                break
            same = True
            for k in range(n_words):
                if words[reps[d], k] != words[i, k]:
                    same = False
                    break
            if same:
                index[i] = d
                break
            slot = (slot + 1) & (capacity - 1)
    distinct = np.empty((n_reps, n_words), dtype=np.uint64)
    for d in range(n_reps):
        for k in range(n_words):
            distinct[d, k] = words[reps[d], k]
    return distinct, index


class _InkColumns:
    """The binarised columns of one image, packed, with repeated columns (blank space) merged."""

    def __init__(self, gray: np.ndarray) -> None:
        self.height = gray.shape[0]
        self.words, self.index = _distinct_words(_pack_ink(_kernel_array(gray), INK_THRESHOLD))


def _dtw_ink(a: _InkColumns, b: _InkColumns, shift: int) -> float:
    """sqrt of the minimal DTW cost between two column sequences, cost minimised over shifts."""
    if shift == 0:
        words_a = a.words[:, None, :]
        words_b = b.words[:, None, :]
    else:
        words_a = _shift_words(a.words, a.height, shift, False)
        words_b = _shift_words(b.words, b.height, shift, True)
    cost = _min_shift_costs(_kernel_array(words_a), _kernel_array(words_b))
    return math.sqrt(float(_dtw_cumulative(cost, a.index, b.index)))


# ----------------------------------------------------------------------------- public metrics


def dtw(pred: Any, gold: Any) -> float:
    """DTW distance between the binarised columns of two grayscale images (lower is better)."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    return _dtw_ink(_InkColumns(a), _InkColumns(b), 0)


def dtw_shift(pred: Any, gold: Any) -> float:
    """DTW whose column cost is the best over vertical shifts up to 10% of the height."""
    a, b = as_gray(pred), as_gray(gold)
    _check_pair(a, b)
    return _dtw_ink(_InkColumns(a), _InkColumns(b), max_shift(a.shape[0]))


def _ssim_and_mse(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(
            f"image of {a.shape[1]}x{a.shape[0]} is smaller than the {SSIM_WINDOW}-pixel SSIM window"
        )
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    value, err = _ssim_mse(_kernel_array(a), _kernel_array(b), SSIM_WINDOW, c1, c2)
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
    ink_a, ink_b = _InkColumns(a), _InkColumns(b)
    ssim_value, mse_value = _ssim_and_mse(a, b)
    return {
        "dtw": _dtw_ink(ink_a, ink_b, 0),
        "dtw_shift": _dtw_ink(ink_a, ink_b, max_shift(a.shape[0])),
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
    """Read an image file as 8-bit grayscale (``convert("L")``); DataError naming it if unreadable."""
    try:
        with Image.open(path) as image:
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

    pairs = [(n, str(preds[n]), str(golds[n])) for n in names]
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    chunk = max(1, min(64, len(pairs) // (workers * 8) or 1))
    log.info("evaluating %d image pairs with %d worker(s)", len(pairs), workers)
    warm_up()
    results: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
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

    columns: tuple[str, ...] = METRICS
    if clip_model is not None:
        # after the worker processes are gone: they are forked, and must not inherit torch state
        from markup2im.clip_score import clip_similarities

        scores, blank_scores = clip_similarities(
            [(preds[n], golds[n]) for n in names],
            clip_model,
            batch_size=clip_batch_size,
            device=device,
        )
        for n, score, blank in zip(names, scores, blank_scores, strict=True):
            results[n][0][CLIP] = float(score)
            results[n][1][CLIP] = float(blank)
        columns = (*METRICS, CLIP)

    with atomic_path(output_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", *columns])
            for name in names:
                writer.writerow([name, *(repr(results[name][0][m]) for m in columns)])

    summary: dict[str, Any] = {
        "count": len(names),
        "pred_dir": str(pred_dir),
        "gold_dir": str(gold_dir),
        "missing_predictions": missing_predictions,
        "missing_predictions_count": len(missing_predictions),
        "missing_gold": missing_gold,
        "missing_gold_count": len(missing_gold),
    }
    for metric in columns:
        summary[metric] = summarize([results[n][0][metric] for n in names])
    summary["blank"] = {m: summarize([results[n][1][m] for n in names]) for m in columns}
    summary["dtw_ratio_to_blank"] = ratio_to_blank(summary, "dtw")
    if clip_model is not None:
        summary["clip_model"] = clip_model
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
