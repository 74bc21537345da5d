"""The metrics table from real ``evaluate`` summaries; the ``figures metrics-table`` and
``figures html`` commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from figures_helpers import evaluate_two_methods

from markup2im.cli import main
from markup2im.errors import DataError
from markup2im.figures import tables


@pytest.fixture
def evaluated(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Real evaluate outputs (metrics CSV, summary JSON) for two methods."""
    return evaluate_two_methods(tmp_path)


def test_metrics_table_csv_and_html(tmp_path: Path, evaluated: dict) -> None:
    out_csv, out_html = tmp_path / "table.csv", tmp_path / "table.html"
    summaries = [(label, paths[1]) for label, paths in evaluated.items()]
    tables.metrics_table(summaries, out_csv, out_html)
    with open(out_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["method"]) for r in rows] == [
        ("math", "baseline"),
        ("math", "scheduled_sampling"),
    ]
    summary = json.loads(evaluated["math/baseline"][1].read_text())
    assert rows[0]["count"] == "5" and rows[0]["missing_predictions"] == "1"
    assert float(rows[0]["dtw_mean"]) == summary["dtw"]["mean"]
    assert rows[0]["ssim"] == tables.format_mean_std(
        summary["ssim"]["mean"], summary["ssim"]["std"]
    )
    assert "\u00b1" in rows[0]["mse"]
    # the blank page's scores on the same gold images, and the model's dtw relative to them
    for metric in ("dtw", "dtw_shift", "ssim", "mse"):
        blank = summary["blank"][metric]
        assert rows[0][f"blank_{metric}"] == tables.format_mean_std(blank["mean"], blank["std"])
        assert float(rows[0][f"blank_{metric}_mean"]) == blank["mean"]
    assert float(rows[0]["dtw_ratio_to_blank"]) == summary["dtw_ratio_to_blank"]
    page = out_html.read_text(encoding="utf-8")
    assert page.count("<tr>") == 3 and "scheduled_sampling" in page and rows[1]["dtw"] in page
    assert "blank page: DTW" in page and "DTW / blank" in page and rows[1]["blank_ssim"] in page
    assert tables.format_number(summary["dtw_ratio_to_blank"]) in page


def test_metrics_table_reads_summaries_without_blank_reference(
    tmp_path: Path, evaluated: dict
) -> None:
    summary = json.loads(evaluated["math/baseline"][1].read_text())
    del summary["blank"], summary["dtw_ratio_to_blank"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(summary))
    (row,) = tables.metrics_table([("math/baseline", old)], tmp_path / "t.csv")
    assert row["blank_dtw"] == "" and row["dtw_ratio_to_blank"] is None
    assert row["dtw"] == tables.format_mean_std(summary["dtw"]["mean"], summary["dtw"]["std"])
    summary["blank"] = {"dtw": {"mean": 1.0}}
    old.write_text(json.dumps(summary))
    with pytest.raises(DataError, match="old.json.*blank-page"):
        tables.metrics_table([("math/baseline", old)], tmp_path / "t.csv")


def test_metrics_table_bad_summary(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"count": 3}')
    with pytest.raises(DataError, match="bad.json.*dtw"):
        tables.metrics_table([("x", bad)], tmp_path / "t.csv")
    with pytest.raises(DataError, match="missing.json"):
        tables.metrics_table([("x", tmp_path / "missing.json")], tmp_path / "t.csv")


def test_metrics_table_and_html_commands(tmp_path: Path, evaluated: dict) -> None:
    summaries = [f"--summary={label}={paths[1]}" for label, paths in evaluated.items()]
    output = ["--output", str(tmp_path / "t.csv"), "--html", str(tmp_path / "t.html")]
    assert main(["figures", "metrics-table", *summaries, *output]) == 0
    page = ["--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "t2.html")]
    assert main(["figures", "html", *page]) == 0
