"""Metrics against independent computations (tslearn, sewar, scikit-image, brute force) and
hand-checked cases; the directory evaluator and the ``evaluate`` command end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from markup2im import metrics
from markup2im.errors import DataError

REL = 1e-9


def text_like(rng: np.random.Generator, height: int, width: int, blobs: int = 12) -> np.ndarray:
    """A white image with dark rectangles of random gray levels (some above the ink threshold)."""
    image = np.full((height, width), 255, dtype=np.uint8)
    for _ in range(blobs):
        h = int(rng.integers(1, max(2, height // 3)))
        w = int(rng.integers(1, max(2, width // 8)))
        y = int(rng.integers(0, height - h + 1))
        x = int(rng.integers(0, width - w + 1))
        image[y : y + h, x : x + w] = rng.integers(0, 220)
    noise = rng.random((height, width)) < 0.02
    image[noise] = rng.integers(0, 256, size=int(noise.sum()))
    return image


def perturbed(rng: np.random.Generator, gold: np.ndarray) -> np.ndarray:
    """A prediction-like variant of ``gold``: shifted a little, with some blobs added."""
    shifted = np.roll(gold, (int(rng.integers(-3, 4)), int(rng.integers(-5, 6))), axis=(0, 1))
    extra = text_like(rng, *gold.shape, blobs=3)
    return np.minimum(shifted, extra)


def columns(gray: np.ndarray) -> np.ndarray:
    return (gray < 150).T.astype(np.float64)


def brute_force_dtw(pred: np.ndarray, gold: np.ndarray, shifts: bool) -> float:
    """dtw (or dtw_shift) straight from its definition, in plain numpy loops."""
    a, b = columns(pred), columns(gold)
    n, m = len(a), len(b)
    height = a.shape[1]
    limit = math.floor(0.1 * height) if shifts else 0
    cost = np.full((n, m), np.inf)
    for s in range(-limit, limit + 1):
        rows = [r for r in range(height) if 0 <= r + s < height]
        shifted_a = a[:, rows]
        shifted_b = b[:, [r + s for r in rows]]
        diff = ((shifted_a[:, None, :] - shifted_b[None, :, :]) ** 2).sum(-1)
        cost = np.minimum(cost, diff)
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            total[i, j] = cost[i - 1, j - 1] + min(
                total[i - 1, j], total[i, j - 1], total[i - 1, j - 1]
            )
    return math.sqrt(total[n, m])


SIZES = [(64, 320), (70, 40), (130, 24), (11, 11), (9, 30)]


@pytest.mark.slow  # tslearn compiles its numba kernels on first use (~15 s)
@pytest.mark.parametrize(("height", "width"), SIZES[:4])
def test_dtw_equals_tslearn(height: int, width: int) -> None:
    tslearn_metrics = pytest.importorskip("tslearn.metrics")
    rng = np.random.default_rng(height * 1000 + width)
    for _ in range(3):
        gold = text_like(rng, height, width)
        pred = perturbed(rng, gold)
        expected = tslearn_metrics.dtw(columns(pred), columns(gold))
        assert metrics.dtw(pred, gold) == pytest.approx(expected, rel=REL, abs=1e-12)


@pytest.mark.parametrize(("height", "width"), [(20, 30), (40, 25), (70, 16), (9, 12), (130, 8)])
def test_dtw_and_dtw_shift_equal_brute_force(height: int, width: int) -> None:
    rng = np.random.default_rng(height + width)
    for _ in range(3):
        gold = text_like(rng, height, width, blobs=6)
        pred = perturbed(rng, gold)
        expected = brute_force_dtw(pred, gold, shifts=False)
        assert metrics.dtw(pred, gold) == pytest.approx(expected, rel=REL, abs=1e-12)
        expected = brute_force_dtw(pred, gold, shifts=True)
        assert metrics.dtw_shift(pred, gold) == pytest.approx(expected, rel=REL, abs=1e-12)
        assert metrics.dtw_shift(pred, gold) <= metrics.dtw(pred, gold) + 1e-12


@pytest.mark.parametrize(("height", "width"), SIZES[:4])
def test_ssim_and_mse_equal_sewar_and_skimage(height: int, width: int) -> None:
    full_ref = pytest.importorskip("sewar.full_ref")
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(7 * height + width)
    for _ in range(3):
        gold = text_like(rng, height, width)
        pred = perturbed(rng, gold)
        sewar_ssim, _cs = full_ref.ssim(gold, pred, ws=11)  # the original's call
        ours = metrics.ssim(pred, gold)
        assert ours == pytest.approx(sewar_ssim, rel=REL, abs=1e-12)
        skimage_ssim = structural_similarity(
            pred, gold, win_size=11, use_sample_covariance=False, data_range=255
        )
        assert ours == pytest.approx(skimage_ssim, rel=REL, abs=1e-12)
        assert metrics.mse(pred, gold) == pytest.approx(full_ref.rmse(gold, pred) ** 2, rel=REL)


def test_compute_metrics_agrees_with_single_metrics() -> None:
    rng = np.random.default_rng(3)
    gold = text_like(rng, 64, 320)
    pred = perturbed(rng, gold)
    both = metrics.compute_metrics(pred, gold)
    assert list(both) == list(metrics.METRICS)
    assert both["dtw"] == metrics.dtw(pred, gold)
    assert both["dtw_shift"] == metrics.dtw_shift(pred, gold)
    assert both["ssim"] == metrics.ssim(pred, gold)
    assert both["mse"] == metrics.mse(pred, gold)


def test_identical_images() -> None:
    image = text_like(np.random.default_rng(0), 64, 320)
    result = metrics.compute_metrics(image, image.copy())
    assert result == {"dtw": 0.0, "dtw_shift": 0.0, "ssim": pytest.approx(1.0, abs=1e-15), "mse": 0}


def test_one_column_shift_small_dtw_large_mse() -> None:
    gold = np.full((16, 16), 255, dtype=np.uint8)
    gold[4:12, 4:8] = 0  # an 8x4 ink block
    pred = np.roll(gold, 1, axis=1)
    # warping absorbs the extra blank column; 16 pixels differ by 255 for the mse
    assert metrics.dtw(pred, gold) == 0.0
    assert metrics.mse(pred, gold) == 16 * 255**2 / 256
    assert metrics.ssim(pred, gold) < 0.9


def test_hand_checked_dtw_and_vertical_shift() -> None:
    gold = np.full((20, 12), 255, dtype=np.uint8)
    pred = gold.copy()
    pred[5, 3] = 0
    # one ink pixel against a blank image: one column pays 1
    assert metrics.dtw(pred, gold) == 1.0
    pred[9, 3] = 40
    assert metrics.dtw(pred, gold) == pytest.approx(math.sqrt(2))
    gold[6, 3] = 0
    gold[10, 3] = 0
    # the same two pixels one row lower: 4 differing cells without shifts, 0 with a shift of 1
    assert metrics.dtw(pred, gold) == 2.0
    assert metrics.dtw_shift(pred, gold) == 0.0
    # gray 150 is not ink, 149 is
    pred[:] = 150
    assert metrics.dtw(pred, np.full_like(pred, 255)) == 0.0
    pred[0, 0] = 149
    assert metrics.dtw(pred, np.full_like(pred, 255)) == 1.0


def test_blank_page_dtw_is_the_root_of_the_gold_ink() -> None:
    """dtw(blank, gold) = sqrt(number of ink pixels of the gold), exactly.

    Proof: every column of the blank page is the zero vector, so the cost of matching any blank
    column with gold column j is |b_j|^2 = ink_j, the ink pixels of column j, whatever the blank
    column. A warping path runs from (0, 0) to (n-1, m-1) and moves at most one column at a time,
    so it visits every gold column at least once and costs at least sum_j ink_j. The pages have
    the same width, so the diagonal path visits every gold column exactly once and costs exactly
    sum_j ink_j: the minimum. Hence dtw^2 is the total ink.
    """
    gold = np.full((12, 14), 255, dtype=np.uint8)
    gold[2:5, 3] = 0  # 3 ink pixels in one column
    gold[7, 3:9] = 149  # 6 more, one of them in the same column; 149 is ink
    gold[9, 10:13] = 150  # not ink
    gold[11, 13] = 20  # 1 in the last column
    ink = int((gold < metrics.INK_THRESHOLD).sum())
    assert ink == 10
    blank = metrics.blank_page(gold)
    assert blank.shape == gold.shape and blank.dtype == np.uint8 and (blank == 255).all()
    assert metrics.dtw(blank, gold) == math.sqrt(ink)
    scores = metrics.blank_metrics(gold)
    assert scores["dtw"] == math.sqrt(ink)
    assert scores["dtw_shift"] == brute_force_dtw(blank, gold, shifts=True) <= math.sqrt(ink)
    diff = 255 - gold.astype(np.int64)
    assert scores["mse"] == (diff * diff).sum() / gold.size
    assert scores == metrics.compute_metrics(blank, gold)
    # the same on a larger, text-like page, and for a gold image in RGB mode
    page = text_like(np.random.default_rng(8), 64, 320)
    assert metrics.blank_metrics(page)["dtw"] == pytest.approx(math.sqrt((page < 150).sum()))
    rgb = Image.fromarray(np.stack([page] * 3, axis=-1), mode="RGB")
    assert metrics.blank_metrics(rgb) == metrics.blank_metrics(page)


def test_blank_page_of_a_blank_gold_scores_perfectly() -> None:
    white = np.full((16, 16), 255, dtype=np.uint8)
    assert metrics.blank_metrics(white) == {
        "dtw": 0.0,
        "dtw_shift": 0.0,
        "ssim": pytest.approx(1.0, abs=1e-15),
        "mse": 0.0,
    }


def test_no_shift_below_ten_rows() -> None:
    rng = np.random.default_rng(5)
    gold = text_like(rng, 9, 30)
    pred = perturbed(rng, gold)
    assert metrics.max_shift(9) == 0
    assert metrics.max_shift(64) == 6
    assert metrics.dtw_shift(pred, gold) == metrics.dtw(pred, gold)


def test_pil_images_are_converted_to_gray() -> None:
    rng = np.random.default_rng(11)
    gold = text_like(rng, 32, 48)
    rgb = np.stack([gold, np.roll(gold, 3, axis=1), gold[::-1]], axis=-1)
    image = Image.fromarray(rgb, mode="RGB")
    gray = np.asarray(image.convert("L"))
    assert metrics.compute_metrics(image, gold) == metrics.compute_metrics(gray, gold)


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError, match="differ"):
        metrics.dtw(np.zeros((10, 10), np.uint8), np.zeros((10, 11), np.uint8))
    with pytest.raises(ValueError, match="SSIM window"):
        metrics.ssim(np.zeros((10, 40), np.uint8), np.zeros((10, 40), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        metrics.dtw(np.zeros((0, 10), np.uint8), np.zeros((0, 10), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        metrics.mse(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))


# ----------------------------------------------------------------------------- directories


def write_pairs(root: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    pred_dir, gold_dir = root / "pred", root / "gold"
    pred_dir.mkdir(parents=True)
    gold_dir.mkdir(parents=True)
    for i in range(count):
        gold = text_like(rng, 64, 320)
        Image.fromarray(gold).save(gold_dir / f"{i:03d}.png")
        Image.fromarray(perturbed(rng, gold)).save(pred_dir / f"{i:03d}.png")
    return pred_dir, gold_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_dirs_rows_summary_and_unmatched(tmp_path: Path) -> None:
    pred_dir, gold_dir = write_pairs(tmp_path, 12)
    (gold_dir / "005.png").unlink()  # prediction without gold
    (pred_dir / "007.png").unlink()  # gold without prediction
    (pred_dir / "notes.txt").write_text("not an image")
    out_csv, out_json = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "summary.json"
    summary = metrics.evaluate_dirs(pred_dir, gold_dir, out_csv, out_json, workers=1)

    rows = read_csv(out_csv)
    assert list(rows[0]) == ["filename", "dtw", "dtw_shift", "ssim", "mse"]
    names = [row["filename"] for row in rows]
    assert names == sorted(f"{i:03d}.png" for i in range(12) if i not in (5, 7))
    first = metrics.compute_metrics(
        np.asarray(Image.open(pred_dir / "000.png")), np.asarray(Image.open(gold_dir / "000.png"))
    )
    assert {m: float(rows[0][m]) for m in metrics.METRICS} == first

    saved = json.loads(out_json.read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["count"] == 10
    assert saved["missing_gold"] == ["005.png"] and saved["missing_gold_count"] == 1
    assert saved["missing_predictions"] == ["007.png"]
    assert saved["missing_predictions_count"] == 1
    for metric in metrics.METRICS:
        values = np.array([float(row[metric]) for row in rows])
        assert saved[metric]["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert saved[metric]["std"] == pytest.approx(values.std(), rel=1e-12)
        assert saved[metric]["median"] == pytest.approx(np.median(values), rel=1e-12)
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_evaluate_dirs_summary_has_the_blank_reference(tmp_path: Path) -> None:
    pred_dir, gold_dir = write_pairs(tmp_path, 6, seed=2)
    (pred_dir / "004.png").unlink()  # the blank page is scored on the matched gold images only
    summary = metrics.evaluate_dirs(pred_dir, gold_dir, tmp_path / "m.csv", workers=1)
    golds = [np.asarray(Image.open(gold_dir / f"{i:03d}.png")) for i in (0, 1, 2, 3, 5)]
    blank = [metrics.blank_metrics(g) for g in golds]
    assert set(summary["blank"]) == set(metrics.METRICS)
    for metric in metrics.METRICS:
        assert summary["blank"][metric].keys() == summary[metric].keys()
        assert summary["blank"][metric] == metrics.summarize([b[metric] for b in blank])
    assert summary["blank"]["dtw"]["mean"] > summary["dtw"]["mean"] > 0  # close to the gold
    assert summary["dtw_ratio_to_blank"] == summary["dtw"]["mean"] / summary["blank"]["dtw"]["mean"]
    assert 0 < summary["dtw_ratio_to_blank"] < 1
    assert metrics.ratio_to_blank(summary, "dtw") == summary["dtw_ratio_to_blank"]


def test_predictions_equal_to_gold_have_ratio_zero(tmp_path: Path) -> None:
    _pred_dir, gold_dir = write_pairs(tmp_path, 4, seed=3)
    out_json = tmp_path / "s.json"
    metrics.evaluate_dirs(gold_dir, gold_dir, tmp_path / "m.csv", out_json, workers=1)
    saved = json.loads(out_json.read_text())
    assert saved["dtw"]["mean"] == 0.0 and saved["blank"]["dtw"]["mean"] > 0
    assert saved["dtw_ratio_to_blank"] == 0.0
    # all-blank gold pages: a blank page is perfect and the ratio is undefined
    white = tmp_path / "white"
    white.mkdir()
    for i in range(2):
        Image.new("L", (40, 20), 255).save(white / f"{i}.png")
    summary = metrics.evaluate_dirs(white, white, tmp_path / "w.csv", workers=1)
    assert summary["blank"]["dtw"]["mean"] == 0.0 and summary["dtw_ratio_to_blank"] is None


def test_evaluate_dirs_parallel_equals_serial(tmp_path: Path) -> None:
    pred_dir, gold_dir = write_pairs(tmp_path, 20, seed=4)
    metrics.evaluate_dirs(pred_dir, gold_dir, tmp_path / "one.csv", workers=1)
    metrics.evaluate_dirs(pred_dir, gold_dir, tmp_path / "two.csv", workers=2)
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()


def test_evaluate_dirs_errors_name_the_files(tmp_path: Path) -> None:
    pred_dir, gold_dir = write_pairs(tmp_path, 4)
    Image.new("L", (300, 64), 255).save(pred_dir / "001.png")
    (pred_dir / "002.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as info:
        metrics.evaluate_dirs(pred_dir, gold_dir, tmp_path / "m.csv", workers=2)
    message = str(info.value)
    assert "2 image pair(s)" in message
    assert "001.png" in message and "300x64" in message
    assert str(pred_dir / "002.png") in message
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(DataError, match="not found"):
        metrics.evaluate_dirs(tmp_path / "nowhere", gold_dir, tmp_path / "m.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image file names in common"):
        metrics.evaluate_dirs(empty, gold_dir, tmp_path / "m.csv")


def test_a_decompression_bomb_is_a_data_error_naming_it(tmp_path: Path, capsys) -> None:
    """A few-KB PNG decoding to gigapixels was decoded in full, or raised PIL's
    DecompressionBombError from a worker: a traceback, exit 1."""
    from image_helpers import bomb_png

    from markup2im.cli import main

    pred_dir, gold_dir = write_pairs(tmp_path, 4)
    (pred_dir / "001.png").write_bytes(bomb_png(5000, 5000))  # over markup2im's bound only
    (gold_dir / "002.png").write_bytes(bomb_png(20_000, 10_000))  # over PIL's too
    with pytest.raises(DataError) as info:
        metrics.evaluate_dirs(pred_dir, gold_dir, tmp_path / "m.csv", workers=2)
    message = str(info.value)
    assert "2 image pair(s)" in message
    assert f"{pred_dir / '001.png'}: a possible decompression bomb" in message
    assert f"{gold_dir / '002.png'}: a possible decompression bomb" in message
    assert not (tmp_path / "m.csv").exists()
    code = main([
        "evaluate", "--pred-dir", str(pred_dir), "--gold-dir", str(gold_dir),
        "--output", str(tmp_path / "m.csv"), "--workers", "1",
    ])  # fmt: skip
    assert code == 2 and "possible decompression bomb" in capsys.readouterr().err


def test_evaluate_command(tmp_path: Path) -> None:
    pred_dir, gold_dir = write_pairs(tmp_path, 6)
    out_csv, out_json = tmp_path / "m.csv", tmp_path / "s.json"
    command = [sys.executable, "-m", "markup2im", "evaluate", "--pred-dir", str(pred_dir)]
    command += ["--gold-dir", str(gold_dir), "--output", str(out_csv), "--summary", str(out_json)]
    done = subprocess.run([*command, "--workers", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(read_csv(out_csv)) == 6
    assert json.loads(out_json.read_text())["count"] == 6

    (gold_dir / "003.png").write_bytes(b"broken")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    assert "003.png" in done.stderr and "Traceback" not in done.stderr
