"""The compiled kernels behind :mod:`markup2im.metrics`: packed ink columns, DTW, SSIM and MSE.

Exact integer arithmetic wherever the definitions allow it, but fast: ink columns are packed into
64-bit words so that a squared distance between binary columns is a popcount of their XOR,
repeated columns (blank space) are costed once, and the DTW, SSIM and MSE loops are compiled with
numba (cached on disk, so a new process only loads them). Every kernel takes C-contiguous,
writeable arrays (:func:`kernel_array`), so that each compiles for one signature only.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import config as numba_config
from numba.extending import intrinsic


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
def min_shift_costs(words_a: np.ndarray, words_b: np.ndarray) -> np.ndarray:
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
def dtw_cumulative(cost: np.ndarray, index_a: np.ndarray, index_b: np.ndarray) -> np.int64:
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
def ssim_mse(x: np.ndarray, y: np.ndarray, win: int, c1: float, c2: float) -> tuple[float, float]:
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


def kernel_array(array: np.ndarray) -> np.ndarray:
    """C-contiguous and writeable, so that every call matches the one compiled signature
    (read-only arrays, e.g. from ``np.asarray(PIL image)``, would trigger a new compilation)."""
    return np.require(array, requirements=["C", "W"])


@njit(cache=True, nogil=True)
def pack_ink(gray: np.ndarray, threshold: int) -> np.ndarray:
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
def shift_words(words: np.ndarray, height: int, max_s: int, move: bool) -> np.ndarray:
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
def distinct_words(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


class InkColumns:
    """The binarised columns (gray < ``threshold``) of one uint8 image, packed, with repeated
    columns (blank space) merged."""

    def __init__(self, gray: np.ndarray, threshold: int) -> None:
        self.height = gray.shape[0]
        self.words, self.index = distinct_words(pack_ink(kernel_array(gray), threshold))


def dtw_ink(a: InkColumns, b: InkColumns, shift: int) -> float:
    """sqrt of the minimal DTW cost between two column sequences, cost minimised over shifts."""
    if shift == 0:
        words_a = a.words[:, None, :]
        words_b = b.words[:, None, :]
    else:
        words_a = shift_words(a.words, a.height, shift, False)
        words_b = shift_words(b.words, b.height, shift, True)
    cost = min_shift_costs(kernel_array(words_a), kernel_array(words_b))
    return math.sqrt(float(dtw_cumulative(cost, a.index, b.index)))
