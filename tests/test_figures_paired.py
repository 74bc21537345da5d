"""The paired comparison of two runs: hand-made metrics CSVs with known differences, identical runs,
the bootstrap's determinism and errors that name the files; the command end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from markup2im.cli import main
from markup2im.errors import ConfigError, DataError
from markup2im.figures import paired
from markup2im.metrics import METRICS

# per-image metrics of a baseline and a treatment over five images: (dtw, dtw_shift, ssim, mse)
BASELINE = {
    "a.png": (10.0, 8.0, 0.50, 100.0),
    "b.png": (12.0, 9.0, 0.40, 200.0),
    "c.png": (8.0, 8.0, 0.60, 300.0),
    "d.png": (20.0, 15.0, 0.20, 400.0),
    "e.png": (5.0, 5.0, 0.90, 500.0),
}
# treatment - baseline per image
DIFFERENCES = {
    "a.png": (-2.0, 0.0, 0.25, -50.0),
    "b.png": (-4.0, 1.0, -0.125, 0.0),
    "c.png": (1.0, 0.0, 0.0, 10.0),
    "d.png": (-5.0, -2.0, 0.125, -10.0),
    "e.png": (0.0, 1.0, 0.0, 0.0),
}
# treatment better (lower dtw, dtw_shift, mse; higher ssim), ties count half
WIN_RATES = {
    "dtw": (3 + 0.5) / 5,
    "dtw_shift": (1 + 0.5 * 2) / 5,
    "ssim": (2 + 0.5 * 2) / 5,
    "mse": (2 + 0.5 * 2) / 5,
}


def write_metrics(path: Path, rows: dict[str, tuple[float, ...]], reverse: bool = False) -> Path:
    """A metrics CSV in the layout of ``markup2im evaluate`` (optionally in reverse order)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *METRICS])
        for name in sorted(rows, reverse=reverse):
            writer.writerow([name, *(repr(v) for v in rows[name])])
    return path


def treatment_rows() -> dict[str, tuple[float, ...]]:
    return {
        name: tuple(b + d for b, d in zip(BASELINE[name], DIFFERENCES[name], strict=True))
        for name in BASELINE
    }


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = write_metrics(tmp_path / "baseline.csv", BASELINE)
    # matched by file name, not by row order
    treat = write_metrics(tmp_path / "treatment.csv", treatment_rows(), reverse=True)
    return base, treat


def test_known_differences_give_mean_interval_and_win_rate(pair: tuple[Path, Path]) -> None:
    rows = paired.paired_comparison(*pair, resamples=2000, seed=3)
    assert [r["metric"] for r in rows] == list(METRICS)
    treatment = treatment_rows()
    differences = np.array([np.subtract(treatment[n], BASELINE[n]) for n in sorted(BASELINE)])
    for j, row in enumerate(rows):
        metric = row["metric"]
        assert row["n"] == 5
        assert row["mean_difference"] == pytest.approx(differences[:, j].mean(), abs=1e-12)
        assert row["baseline_mean"] == pytest.approx(np.mean([BASELINE[n][j] for n in BASELINE]))
        assert row["treatment_mean"] - row["baseline_mean"] == pytest.approx(
            row["mean_difference"], abs=1e-9
        )
        assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"], row
        assert (
            differences[:, j].min() <= row["ci_low"] and row["ci_high"] <= differences[:, j].max()
        )
        assert row["win_rate"] == WIN_RATES[metric], metric
        assert row["higher_is_better"] == (metric == "ssim")
        assert (row["resamples"], row["seed"], row["confidence"]) == (2000, 3, 0.95)
    assert rows[0]["mean_difference"] == -2.0  # dtw: (-2 - 4 + 1 - 5 + 0) / 5
    # a genuine interval, strictly inside the range of the differences (-5 .. 1)
    assert -5.0 < rows[0]["ci_low"] < -2.0 < rows[0]["ci_high"] < 1.0


def test_identical_runs_differ_by_nothing(pair: tuple[Path, Path]) -> None:
    base, _treat = pair
    for row in paired.paired_comparison(base, base):
        assert row["mean_difference"] == 0.0
        assert row["ci_low"] == row["ci_high"] == 0.0
        assert row["win_rate"] == 0.5
        assert row["n"] == 5 and row["resamples"] == 10_000


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(1).normal(size=(37, 4))
    first = paired.bootstrap_mean_interval(values, resamples=5000, seed=11)
    again = paired.bootstrap_mean_interval(values, resamples=5000, seed=11)
    other = paired.bootstrap_mean_interval(values, resamples=5000, seed=12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # the 95% interval of a mean of 37 standard normals is about +-1.96 / sqrt(37) wide
    width = first[1] - first[0]
    assert np.all((width > 0.45) & (width < 0.85)), width
    # drawn in blocks when the data is large: still one stream of resamples
    big = np.random.default_rng(2).normal(size=(3000, 4))
    low, high = paired.bootstrap_mean_interval(big, resamples=1200, seed=0)
    assert np.all(low < big.mean(axis=0)) and np.all(big.mean(axis=0) < high)
    with pytest.raises(ConfigError, match="resamples"):
        paired.bootstrap_mean_interval(values, resamples=0)
    with pytest.raises(ConfigError, match="confidence"):
        paired.bootstrap_mean_interval(values, confidence=95)


def test_win_rate_counts_ties_half() -> None:
    differences = np.array([-1.0, 0.0, 0.0, 2.0])
    assert paired.win_rate(differences, higher_is_better=False) == 0.5
    assert paired.win_rate(differences, higher_is_better=True) == 0.5
    assert paired.win_rate(np.array([-1.0, -0.5, 0.0]), higher_is_better=False) == 2.5 / 3


def test_different_images_are_an_error_naming_both_files(tmp_path: Path) -> None:
    base = write_metrics(tmp_path / "baseline.csv", BASELINE)
    rows = treatment_rows()
    del rows["c.png"]
    rows["z.png"] = (1.0, 1.0, 1.0, 1.0)
    treat = write_metrics(tmp_path / "treatment.csv", rows)
    with pytest.raises(DataError) as info:
        paired.paired_comparison(base, treat)
    message = str(info.value)
    assert str(base) in message and str(treat) in message
    assert "c.png" in message and "z.png" in message
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,dtw,dtw_shift,ssim,mse\na.png,1,2,x,4\n")
    with pytest.raises(DataError, match="bad.csv, line 2: ssim"):
        paired.paired_comparison(base, bad)
    with pytest.raises(DataError, match="empty.csv: no rows"):
        paired.read_metrics_csv(write_metrics(tmp_path / "empty.csv", {}))
    with pytest.raises(DataError, match="nowhere.csv: metrics file not found"):
        paired.read_metrics_csv(tmp_path / "nowhere.csv")
    (tmp_path / "short.csv").write_text("filename,dtw\na.png,1\n")
    with pytest.raises(DataError, match="short.csv: missing column"):
        paired.read_metrics_csv(tmp_path / "short.csv")


def test_compare_runs_writes_csv_and_page_and_the_table_reads_them(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    out_csv, out_html = tmp_path / "paired.csv", tmp_path / "paired.html"
    rows = paired.compare_runs(*pair, out_csv, out_html, resamples=500, seed=1)
    assert paired.read_paired_csv(out_csv) == rows
    with open(out_csv, newline="", encoding="utf-8") as handle:
        assert tuple(csv.DictReader(handle).fieldnames or ()) == paired.PAIRED_COLUMNS
    page = out_html.read_text(encoding="utf-8")
    assert page.count("<tr>") == 1 + len(METRICS)
    assert "scheduled sampling better" in page and "70.0%" in page  # dtw win rate
    assert paired.format_interval(rows[0]) in page

    table_csv, table_html = tmp_path / "summary" / "t.csv", tmp_path / "summary" / "t.html"
    table = paired.paired_table([("math/ddim50", out_csv), ("tables/ddpm", out_csv)], table_csv)
    assert [(r["dataset"], r["sampler"]) for r in table[:: len(METRICS)]] == [
        ("math", "ddim50"),
        ("tables", "ddpm"),
    ]
    paired.paired_table([("math/ddim50", out_csv)], table_csv, table_html)
    assert table_html.read_text(encoding="utf-8").count("<tr>") == 1 + len(METRICS)
    with pytest.raises(DataError, match="not a paired CSV"):
        paired.paired_table([("x/y", pair[0])], table_csv)


def test_paired_commands(pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out_csv = tmp_path / "p.csv"
    args = ["figures", "paired", "--baseline", str(pair[0]), "--treatment", str(pair[1])]
    assert main([*args, "--output", str(out_csv), "--seed", "5", "--resamples", "300"]) == 0
    rows = paired.read_paired_csv(out_csv)
    assert rows == paired.paired_comparison(*pair, resamples=300, seed=5)
    table = tmp_path / "table.csv"
    html = tmp_path / "table.html"
    command = ["figures", "paired-table", "--paired", f"math/ddim4={out_csv}"]
    assert main([*command, "--output", str(table), "--html", str(html)]) == 0
    assert "math" in html.read_text(encoding="utf-8")
    assert main([*args, "--output", str(out_csv), "--resamples", "0"]) == 2
    assert "--resamples" in capsys.readouterr().err
    json.dumps(rows)  # plain values only


def test_labels_name_the_compared_runs_in_the_pages(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """--labels reaches both pages; without it they name the paper's two methods."""
    args = ["figures", "paired", "--baseline", str(pair[0]), "--treatment", str(pair[1])]
    page, out_csv = tmp_path / "p.html", tmp_path / "p.csv"
    common = ["--output", str(out_csv), "--html", str(page), "--resamples", "50"]
    assert main([*args, *common, "--labels", "baseline,input perturbation"]) == 0
    text = page.read_text(encoding="utf-8")
    assert "input perturbation mean" in text and "scheduled sampling" not in text
    assert main([*args, *common]) == 0
    assert "scheduled sampling mean" in page.read_text(encoding="utf-8")
    table = ["figures", "paired-table", "--paired", f"math/ddim4={out_csv}"]
    html = tmp_path / "t.html"
    assert main([*table, "--output", str(tmp_path / "t.csv"), "--html", str(html),
                 "--labels", "baseline,method"]) == 0  # fmt: skip
    assert "method \u2212 baseline" in html.read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        main([*table, "--output", str(tmp_path / "t.csv"), "--labels", "one"])
    assert stopped.value.code == 2
