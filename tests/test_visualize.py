"""GIFs, grids, tables, plots and HTML pages, read back from the files written."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from markup2im import visualize
from markup2im.cli import main
from markup2im.errors import ConfigError, DataError
from markup2im.metrics import evaluate_dirs


def frame(step: int, size: tuple[int, int] = (64, 64), mode: str = "L") -> Image.Image:
    """A distinct image per step: a dark bar whose length grows with the step."""
    array = np.full((size[1], size[0]), 255, dtype=np.uint8)
    array[10:20, : 3 + 5 * step] = 30
    array[(size[1] // 2 + step) % size[1], :] = 120
    image = Image.fromarray(array, mode="L")
    return image.convert(mode)


def write_frames(directory: Path, steps: list[int], **kwargs: object) -> Path:
    directory.mkdir(parents=True)
    for step in steps:
        frame(step, **kwargs).save(directory / f"step_{step:04d}.png")  # type: ignore[arg-type]
    return directory


def gif_frames(path: Path) -> tuple[list[np.ndarray], list[int], object]:
    images, durations = [], []
    with Image.open(path) as gif:
        loop = gif.info.get("loop")
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
            images.append(np.asarray(gif.convert("L")))
    return images, durations, loop


def test_list_frames_in_step_order(tmp_path: Path) -> None:
    directory = tmp_path / "frames"
    directory.mkdir()
    for step in (10, 2, 0, 100):
        frame(step).save(directory / f"step_{step}.png")
    (directory / "notes.txt").write_text("ignored")
    assert [p.name for p in visualize.list_frames(directory)] == [
        "step_0.png",
        "step_2.png",
        "step_10.png",
        "step_100.png",
    ]
    paths = visualize.list_frames(directory)
    assert visualize.select_frames(paths, 3) == [paths[0], paths[3]]
    assert visualize.select_frames(paths, 2) == [paths[0], paths[2], paths[3]]
    with pytest.raises(ConfigError, match="every"):
        visualize.select_frames(paths, 0)


def test_denoise_gif_frames_loop_and_final_hold(tmp_path: Path) -> None:
    frames_dir = write_frames(tmp_path / "frames" / "a", list(range(10)))
    out = tmp_path / "gifs" / "a.gif"
    count = visualize.denoise_gif(frames_dir, out, every=4, frame_ms=50, final_hold_ms=1500)
    images, durations, loop = gif_frames(out)
    assert count == len(images) == 4  # steps 0, 4, 8 and the final 9
    assert loop == 0  # forever
    assert durations == [50, 50, 50, 1500]
    assert images[0].shape == (192, 192)  # 64x64 enlarged 3x
    expected_last = np.asarray(visualize.enlarge(frame(9), 3))
    np.testing.assert_array_equal(images[-1], expected_last)
    assert not list(out.parent.glob(".*"))


def test_denoise_gif_rgb_and_wide_images_keep_size(tmp_path: Path) -> None:
    frames_dir = write_frames(tmp_path / "f", [0, 1, 2], size=(320, 64), mode="RGB")
    out = tmp_path / "wide.gif"
    assert visualize.denoise_gif(frames_dir, out) == 3
    with Image.open(out) as gif:
        assert gif.size == (320, 64)


def test_denoise_gif_missing_or_empty_frames(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        visualize.denoise_gif(tmp_path / "nowhere", tmp_path / "x.gif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no frame images"):
        visualize.denoise_gif(tmp_path / "empty", tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_compare_gif_layout_labels_and_hold(tmp_path: Path) -> None:
    gold = tmp_path / "gold.png"
    frame(20).save(gold)
    base = write_frames(tmp_path / "baseline", [0, 1, 2, 3, 4])
    ss = write_frames(tmp_path / "ss", [0, 2, 4])
    out = tmp_path / "compare.gif"
    count = visualize.compare_gif(
        gold, [("baseline", base), ("scheduled sampling", ss)], out, final_hold_ms=900
    )
    images, durations, loop = gif_frames(out)
    assert count == len(images) == 5
    assert loop == 0 and durations[-1] == 900 and durations[0] == 80
    band = visualize._label_band_height()
    panel, pad = 192, visualize.PAD
    assert images[0].shape == (band + panel + pad, 3 * panel + 4 * pad)
    for k in range(3):  # each panel has its label: dark pixels above it
        left = pad + k * (panel + pad)
        assert (images[0][:band, left : left + panel] < 128).any()
    assert (images[0][band:, :] < 255).any() and band >= 10
    # a label wider than its panel is shortened instead of running into the next one
    narrow = tmp_path / "narrow.gif"
    visualize.compare_gif(gold, [("x" * 200, base), ("b", ss)], narrow, scale=1)
    with Image.open(narrow) as gif:
        labels = np.asarray(gif.convert("L"))[:band]
    second, third = pad + 64 + pad, pad + 2 * (64 + pad)
    assert (labels[:, second : second + 64] < 128).any()
    assert not (labels[:, third : third + 20] < 128).any()  # "b" sits in the middle

    def panel_of(image: np.ndarray, k: int) -> np.ndarray:
        left = pad + k * (panel + pad)
        return image[band : band + panel, left : left + panel]

    gold_big = np.asarray(visualize.enlarge(frame(20), 3))
    for image in images:
        np.testing.assert_array_equal(panel_of(image, 0), gold_big)
    np.testing.assert_array_equal(
        panel_of(images[1], 1), np.asarray(visualize.enlarge(frame(1), 3))
    )
    # the shorter run holds its final frame
    np.testing.assert_array_equal(
        panel_of(images[4], 2), np.asarray(visualize.enlarge(frame(4), 3))
    )


def test_compare_gif_size_mismatch_names_directory(tmp_path: Path) -> None:
    gold = tmp_path / "gold.png"
    frame(0, size=(32, 32)).save(gold)
    run = write_frames(tmp_path / "run", [0])
    with pytest.raises(DataError, match="run"):
        visualize.compare_gif(gold, [("baseline", run)], tmp_path / "c.gif")


def make_image_dirs(root: Path) -> tuple[Path, Path, Path]:
    gold, base, ss = root / "gold", root / "baseline", root / "ss"
    for directory in (gold, base, ss):
        directory.mkdir(parents=True)
    for i in range(5):
        frame(i, size=(48, 24)).save(gold / f"ex{i}.png")
        frame(i + 1, size=(48, 24)).save(base / f"ex{i}.png")
        frame(i + 3, size=(48, 24)).save(ss / f"ex{i}.png")
    frame(9, size=(48, 24)).save(gold / "only_gold.png")
    return gold, base, ss


def test_sample_grid_shape(tmp_path: Path) -> None:
    gold, base, ss = make_image_dirs(tmp_path)
    out = tmp_path / "grid.png"
    shown = visualize.sample_grid(gold, [("baseline", base), ("ss", ss)], out, limit=3)
    assert shown == ["ex0.png", "ex1.png", "ex2.png"]
    factor = visualize.upscale_factor((48, 24))
    cell_w, cell_h, pad = 48 * factor, 24 * factor, visualize.PAD
    band = visualize._label_band_height()
    with Image.open(out) as grid:
        assert grid.size == (3 * cell_w + 4 * pad, band + 3 * (cell_h + pad))
        array = np.asarray(grid.convert("L"))
    # row 2, column "ss" holds ss/ex2.png
    top, left = band + 2 * (cell_h + pad), pad + 2 * (cell_w + pad)
    expected = np.asarray(visualize.enlarge(frame(5, size=(48, 24)), factor))
    np.testing.assert_array_equal(array[top : top + cell_h, left : left + cell_w], expected)
    assert visualize.sample_grid(gold, [("baseline", base)], out, limit=50) == [
        f"ex{i}.png" for i in range(5)
    ]


def test_sample_grid_without_common_names(tmp_path: Path) -> None:
    gold, base, _ss = make_image_dirs(tmp_path)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(DataError, match="no image file names common"):
        visualize.sample_grid(gold, [("x", empty)], tmp_path / "g.png")


@pytest.fixture
def evaluated(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Real evaluate outputs (metrics CSV, summary JSON) for two methods."""
    gold, base, ss = make_image_dirs(tmp_path / "images")
    outputs = {}
    for label, pred in (("math/baseline", base), ("math/scheduled_sampling", ss)):
        stem = label.replace("/", "_")
        table, summary = tmp_path / f"{stem}.csv", tmp_path / f"{stem}.json"
        evaluate_dirs(pred, gold, table, summary, workers=1)
        outputs[label] = (table, summary)
    return outputs


def test_metrics_table_csv_and_html(tmp_path: Path, evaluated: dict) -> None:
    out_csv, out_html = tmp_path / "table.csv", tmp_path / "table.html"
    summaries = [(label, paths[1]) for label, paths in evaluated.items()]
    visualize.metrics_table(summaries, out_csv, out_html)
    with open(out_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["method"]) for r in rows] == [
        ("math", "baseline"),
        ("math", "scheduled_sampling"),
    ]
    summary = json.loads(evaluated["math/baseline"][1].read_text())
    assert rows[0]["count"] == "5" and rows[0]["missing_predictions"] == "1"
    assert float(rows[0]["dtw_mean"]) == summary["dtw"]["mean"]
    assert rows[0]["ssim"] == visualize.format_mean_std(
        summary["ssim"]["mean"], summary["ssim"]["std"]
    )
    assert "\u00b1" in rows[0]["mse"]
    # the blank page's scores on the same gold images, and the model's dtw relative to them
    for metric in ("dtw", "dtw_shift", "ssim", "mse"):
        blank = summary["blank"][metric]
        assert rows[0][f"blank_{metric}"] == visualize.format_mean_std(blank["mean"], blank["std"])
        assert float(rows[0][f"blank_{metric}_mean"]) == blank["mean"]
    assert float(rows[0]["dtw_ratio_to_blank"]) == summary["dtw_ratio_to_blank"]
    page = out_html.read_text(encoding="utf-8")
    assert page.count("<tr>") == 3 and "scheduled_sampling" in page and rows[1]["dtw"] in page
    assert "blank page: DTW" in page and "DTW / blank" in page and rows[1]["blank_ssim"] in page
    assert visualize.format_number(summary["dtw_ratio_to_blank"]) in page


def test_metrics_table_reads_summaries_without_blank_reference(
    tmp_path: Path, evaluated: dict
) -> None:
    summary = json.loads(evaluated["math/baseline"][1].read_text())
    del summary["blank"], summary["dtw_ratio_to_blank"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(summary))
    (row,) = visualize.metrics_table([("math/baseline", old)], tmp_path / "t.csv")
    assert row["blank_dtw"] == "" and row["dtw_ratio_to_blank"] is None
    assert row["dtw"] == visualize.format_mean_std(summary["dtw"]["mean"], summary["dtw"]["std"])
    summary["blank"] = {"dtw": {"mean": 1.0}}
    old.write_text(json.dumps(summary))
    with pytest.raises(DataError, match="old.json.*blank-page"):
        visualize.metrics_table([("math/baseline", old)], tmp_path / "t.csv")


def test_metrics_table_bad_summary(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"count": 3}')
    with pytest.raises(DataError, match="bad.json.*dtw"):
        visualize.metrics_table([("x", bad)], tmp_path / "t.csv")
    with pytest.raises(DataError, match="missing.json"):
        visualize.metrics_table([("x", tmp_path / "missing.json")], tmp_path / "t.csv")


def test_metric_plots_written(tmp_path: Path, evaluated: dict) -> None:
    out = tmp_path / "plots" / "metrics.png"
    visualize.metric_plots([(label, paths[0]) for label, paths in evaluated.items()], out)
    assert out.stat().st_size > 5000
    with Image.open(out) as image:
        assert image.width > 800 and image.height > 100
    with pytest.raises(DataError, match="missing column"):
        visualize.metric_plots([("x", evaluated["math/baseline"][1])], tmp_path / "p.png")


def write_train_log(path: Path, steps: int, ss: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(visualize.TRAIN_LOG_COLUMNS)
        for step in range(1, steps + 1):
            loss = 0.5 * np.exp(-step / 60) + 0.02 + 0.01 * rng.random()
            prob = min(1.0, step / steps) * 0.5 if ss else 0.0
            writer.writerow([step, step // 50, loss, 1e-4, prob, 1 if ss else 0, 0.7 * step])
        if ss:  # a resumed run repeats the last steps
            writer.writerow([steps, steps // 50, 0.03, 1e-4, 0.5, 1, 0.7 * steps])


def test_loss_curves_from_train_logs(tmp_path: Path) -> None:
    base, ss = tmp_path / "base.csv", tmp_path / "ss.csv"
    write_train_log(base, 200, False, 0)
    write_train_log(ss, 150, True, 1)
    log = visualize.read_train_log(ss)
    assert len(log["step"]) == 150 and log["loss"][-1] == 0.03
    out = tmp_path / "loss.png"
    visualize.loss_curves([("math/baseline", base), ("math/scheduled_sampling", ss)], out)
    assert out.stat().st_size > 5000
    with Image.open(out) as image:
        assert image.size == (800, 450)
    empty = tmp_path / "empty.csv"
    empty.write_text("step,epoch,loss\n")
    with pytest.raises(DataError, match="empty.csv"):
        visualize.loss_curves([("x", empty)], tmp_path / "l.png")


def test_moving_average() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    np.testing.assert_allclose(visualize.moving_average(values, 2), [1, 1.5, 2.5, 3.5, 7])
    np.testing.assert_allclose(visualize.moving_average(values, 1), values)


def test_html_page_embeds_image_and_table(tmp_path: Path) -> None:
    frames_dir = write_frames(tmp_path / "f", [0, 1])
    gif = tmp_path / "a.gif"
    visualize.denoise_gif(frames_dir, gif)
    page = tmp_path / "a.html"
    visualize.html_page(gif, page, title="Denoising <math>")
    text = page.read_text(encoding="utf-8")
    match = re.search(r'src="data:image/gif;base64,([A-Za-z0-9+/=]+)"', text)
    assert match and base64.b64decode(match.group(1)) == gif.read_bytes()
    assert "Denoising &lt;math&gt;" in text

    table = tmp_path / "t.csv"
    table.write_text("method,dtw\nbaseline,1.5\n<b>ss</b>,1.2\n", encoding="utf-8")
    visualize.html_page(table, page)
    text = page.read_text(encoding="utf-8")
    assert text.count("<tr>") == 3 and "<td>baseline</td><td>1.5</td>" in text
    assert "&lt;b&gt;ss&lt;/b&gt;" in text and "<h1>t.csv</h1>" in text
    with pytest.raises(DataError, match="txt"):
        (tmp_path / "x.txt").write_text("x")
        visualize.html_page(tmp_path / "x.txt", page)


def test_cli_commands(tmp_path: Path, evaluated: dict, capsys: pytest.CaptureFixture) -> None:
    gold, base, ss = (tmp_path / "images" / d for d in ("gold", "baseline", "ss"))
    frames = write_frames(tmp_path / "frames", list(range(6)))
    assert (
        main(
            [
                "gif",
                "denoise",
                "--frames-dir",
                str(frames),
                "--output",
                str(tmp_path / "d.gif"),
                "--every",
                "2",
                "--final-hold-ms",
                "700",
            ]
        )
        == 0
    )
    assert gif_frames(tmp_path / "d.gif")[1] == [80, 80, 80, 700]
    assert (
        main(
            [
                "gif",
                "compare",
                "--gold",
                str(frames / "step_0005.png"),
                "--frames",
                f"a={frames}",
                "--output",
                str(tmp_path / "c.gif"),
                "--scale",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "figures",
                "grid",
                "--gold-dir",
                str(gold),
                "--pred",
                f"math/baseline={base}",
                "--pred",
                f"math/ss={ss}",
                "--output",
                str(tmp_path / "g.png"),
                "--limit",
                "2",
            ]
        )
        == 0
    )
    summaries = [f"--summary={label}={paths[1]}" for label, paths in evaluated.items()]
    assert (
        main(
            [
                "figures",
                "metrics-table",
                *summaries,
                "--output",
                str(tmp_path / "t.csv"),
                "--html",
                str(tmp_path / "t.html"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "figures",
                "html",
                "--input",
                str(tmp_path / "t.csv"),
                "--output",
                str(tmp_path / "t2.html"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "gif",
                "denoise",
                "--frames-dir",
                str(tmp_path / "nothing"),
                "--output",
                str(tmp_path / "n.gif"),
            ]
        )
        == 2
    )
    assert "nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["figures", "grid", "--gold-dir", str(gold), "--pred", "no-label", "--output", "x"])
    assert info.value.code == 2
