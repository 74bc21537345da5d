"""Building, validating and reloading datasets (downloading: test_data_hub.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets_helpers import blank, hub_like_dict
from PIL import Image

from markup2im.data.datasets import (
    BUILD_SUMMARY,
    SPLITS,
    DatasetInfo,
    build_dataset,
    load_dataset_dir,
    load_split,
    read_dataset_info,
    save_dataset_dir,
    validate_dataset_dir,
)
from markup2im.data.render import render_markups
from markup2im.data.synth import generate
from markup2im.errors import ConfigError, DataError

CLI = [sys.executable, "-m", "markup2im"]


# ---- building --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_math(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "math"
    build_dataset(
        "math", out, synthetic=True, train=6, validation=2, test=3, seed=11, progress=False
    )
    return out


def test_built_dataset_has_the_hub_form_and_a_summary(built_math):
    dataset = load_dataset_dir(built_math)
    assert list(dataset) == list(SPLITS)
    assert {k: len(v) for k, v in dataset.items()} == {"train": 6, "validation": 2, "test": 3}
    for split in dataset.values():
        assert split.column_names == ["formula", "filename", "image"]
        assert isinstance(split.features["image"], datasets.Image)
    assert read_dataset_info(built_math) == DatasetInfo("math", "formula", 320, 64, 1)
    summary = json.loads((built_math / BUILD_SUMMARY).read_text())
    assert summary["requested"] == {"train": 6, "validation": 2, "test": 3}
    assert summary["splits"] == {"train": 6, "validation": 2, "test": 3}
    assert summary["failed"]["count"] == 0 and summary["source"] == "synthetic:math"
    assert set(summary["shrunk"]) == {"total", *SPLITS}
    assert validate_dataset_dir(built_math, progress=False) == {
        "train": 6,
        "validation": 2,
        "test": 3,
    }


def test_built_dataset_reloads_with_identical_pixels_and_text(built_math, tmp_path):
    dataset = load_dataset_dir(built_math)
    rows = [row for split in SPLITS for row in dataset[split]]
    formulas = [row["formula"] for row in rows]
    assert set(formulas) <= set(generate("math", 40, seed=11))
    rendered = {i.markup: i for i in render_markups("math", formulas, progress=False)}
    for row in rows:
        again = Image.open(io.BytesIO(rendered[row["formula"]].png))
        assert row["image"].mode == "L" and row["image"].size == (320, 64)
        assert np.array_equal(np.asarray(row["image"]), np.asarray(again))
        assert row["filename"] == rendered[row["formula"]].filename
    # the directory is self-contained: a copy elsewhere loads the same bytes
    copy = tmp_path / "copy"
    os.rename(built_math, copy)
    try:
        moved = load_dataset_dir(copy)
        assert moved["test"][0]["formula"] == dataset["test"][0]["formula"]
        assert moved["test"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    finally:
        os.rename(copy, built_math)


def test_building_twice_gives_the_same_rows(built_math, tmp_path):
    again = tmp_path / "again"
    build_dataset(
        "math", again, synthetic=True, train=6, validation=2, test=3, seed=11, progress=False
    )
    for split in SPLITS:
        a = load_dataset_dir(built_math)[split].cast_column("image", datasets.Image(decode=False))
        b = load_dataset_dir(again)[split].cast_column("image", datasets.Image(decode=False))
        assert a["formula"] == b["formula"] and a["filename"] == b["filename"]
        assert [r["bytes"] for r in a["image"]] == [r["bytes"] for r in b["image"]]


def test_build_from_a_markup_file_leaves_out_failures_and_counts_them(tmp_path):
    markup_file = tmp_path / "formulas.txt"
    lines = [f"x_{{{n}}} + y" for n in range(18)] + ["\\undefinedmacro", "", "x_{0} + y"]
    markup_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    summary = build_dataset("math", out, markup_file=markup_file, seed=3, progress=False)
    assert summary["attempted"] == 19 and summary["rendered"] == 18
    assert summary["blank_lines_skipped"] == 1
    assert summary["duplicates_removed"] == {
        "count": 1,
        "items": [{"line": 21, "same_as_line": 1}],
    }
    assert summary["failed"]["count"] == 1
    (failure,) = summary["failed"]["items"]
    assert failure["line"] == 19 and "Undefined control sequence" in failure["error"]
    assert summary["splits"] == {"train": 14, "validation": 2, "test": 2}  # 80/10/10 of 18
    dataset = load_dataset_dir(out)
    names = [n for split in SPLITS for n in dataset[split]["filename"]]
    assert len(set(names)) == 18
    formulas = [f for split in SPLITS for f in dataset[split]["formula"]]
    assert formulas.count("x_{0} + y") == 1


def test_build_from_a_markup_file_fails_only_the_lines_no_renderer_can_take(tmp_path):
    """A lone surrogate in one .jsonl line stopped build-dataset with a UnicodeEncodeError."""
    markup_file = tmp_path / "formulas.jsonl"
    markups = [f"x_{{{n}}} + y" for n in range(10)] + ["a\ud800b", "c\x00d", "\udfff"]
    markup_file.write_text(
        "".join(json.dumps({"markup": m}) + "\n" for m in markups), encoding="utf-8"
    )
    out = tmp_path / "ds"
    summary = build_dataset("math", out, markup_file=markup_file, seed=3, progress=False)
    assert summary["attempted"] == 13 and summary["rendered"] == 10
    failed = {item["line"]: item for item in summary["failed"]["items"]}
    assert sorted(failed) == [11, 12, 13]
    assert failed[11]["error"].startswith(f"{markup_file}:11: lone surrogate U+D800")
    assert failed[12]["error"].startswith(f"{markup_file}:12: NUL character")
    assert failed[11]["markup"] == "a\ufffdb"
    assert json.loads((out / BUILD_SUMMARY).read_text(encoding="utf-8")) == summary
    assert sum(len(split) for split in load_dataset_dir(out).values()) == 10


def test_duplicate_lines_never_reach_two_splits_and_are_counted(tmp_path):
    """Each formula written three times: before, copies landed in train and test alike."""
    markup_file = tmp_path / "formulas.txt"
    unique = [f"a_{{{n}}}" for n in range(10)]
    markup_file.write_text("\n".join(unique * 3) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    summary = build_dataset("math", out, markup_file=markup_file, seed=0, progress=False)
    assert summary["duplicates_removed"]["count"] == 20
    assert summary["duplicates_removed"]["items"][0] == {"line": 11, "same_as_line": 1}
    assert summary["attempted"] == 10
    dataset = load_dataset_dir(out)
    per_split = {split: set(dataset[split]["formula"]) for split in SPLITS}
    assert sorted(f for rows in per_split.values() for f in rows) == sorted(unique)
    assert not per_split["train"] & per_split["test"]
    assert json.loads((out / BUILD_SUMMARY).read_text())["duplicates_removed"]["count"] == 20


def test_no_split_is_ever_written_empty(tmp_path):
    """A split left empty made a dataset directory that nothing could load, after exit 0."""
    four = tmp_path / "four.txt"
    four.write_text("a\nb\nc\nd\n", encoding="utf-8")
    summary = build_dataset("math", tmp_path / "four", markup_file=four, progress=False)
    assert summary["splits"] == {"train": 2, "validation": 1, "test": 1}
    assert {k: len(v) for k, v in load_dataset_dir(tmp_path / "four").items()} == {
        "train": 2,
        "validation": 1,
        "test": 1,
    }
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match="only 2 markup.*need at least one each"):
        build_dataset("math", tmp_path / "two", markup_file=two, progress=False)
    with pytest.raises(
        ConfigError, match="train 0, validation 0, test 20.*train and validation split empty"
    ):
        build_dataset("math", tmp_path / "t", markup_file=four, test=20, progress=False)
    # failed renders leave train empty: the counts say so and nothing is written
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n\\undefinedmacro\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train split would be empty: 2 of 3.*train 0"):
        build_dataset(
            "math", tmp_path / "b", markup_file=bad, train=1, validation=1, test=1,
            progress=False,
        )  # fmt: skip
    assert not any((tmp_path / name).exists() for name in ("two", "t", "b"))


def test_build_dataset_command_refuses_an_empty_split(tmp_path):
    markup_file = tmp_path / "f.txt"
    markup_file.write_text("a\nb\nc\nd\n", encoding="utf-8")
    proc = subprocess.run(
        [*CLI, "build-dataset", "--domain", "math", "--markup-file", str(markup_file),
         "--test", "20", "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "train and validation split empty" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_build_with_sizes_from_a_file_tops_up_after_failures(tmp_path):
    markup_file = tmp_path / "formulas.txt"
    lines = ["\\bad" + "x" * n for n in range(1, 7)] + [f"z^{{{n}}}" for n in range(30)]
    markup_file.write_text("\n".join(lines), encoding="utf-8")
    summary = build_dataset(
        "math", tmp_path / "ds", markup_file=markup_file, train=20, validation=2, test=2,
        seed=0, progress=False,
    )  # fmt: skip
    assert summary["splits"] == {"train": 20, "validation": 2, "test": 2}
    assert summary["shortfall"] == {}


def test_build_molecules_gives_rgb_images(tmp_path):
    out = tmp_path / "mol"
    build_dataset("molecules", out, synthetic=True, train=4, validation=1, test=1, progress=False)
    dataset = load_dataset_dir(out)
    assert dataset["train"].column_names == ["smiles", "filename", "image"]
    image = dataset["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (128, 128)
    assert read_dataset_info(out).channels == 3


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="known domains: math, molecules, music, tables"):
        build_dataset("chemistry", tmp_path / "x", synthetic=True, progress=False)
    with pytest.raises(ConfigError, match="exactly one source"):
        build_dataset("math", tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="must be >= 0"):
        build_dataset("math", tmp_path / "x", synthetic=True, train=-1, progress=False)
    assert not (tmp_path / "x").exists()


def test_build_dataset_command(tmp_path):
    out = tmp_path / "math"
    proc = subprocess.run(
        [*CLI, "build-dataset", "--domain", "math", "--synthetic", "--train", "2",
         "--validation", "1", "--test", "1", "--seed", "4", "--workers", "2",
         "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train 2, validation 1, test 1" in proc.stdout
    assert read_dataset_info(out).domain == "math"
    assert validate_dataset_dir(out, progress=False) == {"train": 2, "validation": 1, "test": 1}


# ---- validation --------------------------------------------------------------------------------


def test_validation_names_every_bad_row(tmp_path):
    wrong_size = blank(size=(100, 64))
    bad = {("train", 1): b"\x89PNG\r\n\x1a\n not really a png", ("test", 0): wrong_size}
    out = tmp_path / "ds"
    save_dataset_dir(
        hub_like_dict({"train": 3, "validation": 1, "test": 2}, bad=bad),
        out,
        DatasetInfo("math", "formula", 320, 64, 1),
    )
    with pytest.raises(DataError) as info:
        validate_dataset_dir(out, progress=False)
    message = str(info.value)
    assert "2 bad row(s)" in message
    assert "train[1] train0001.png: cannot decode image" in message
    assert "test[0] test0000.png: image is 100x64 (WxH), expected 320x64" in message
    assert "train0000.png" not in message


def test_simple_formulas_render_and_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "simple"
    summary = build_dataset(
        "math", out, synthetic=True, difficulty="simple", train=20, validation=2, test=4,
        width=128, height=32, progress=False,
    )  # fmt: skip
    assert summary["source"] == "synthetic:math:simple"
    assert len(load_split(out, "train")) == 20
    with pytest.raises(ConfigError, match="needs --synthetic"):
        build_dataset("math", tmp_path / "x", markup_file=tmp_path / "f.txt", difficulty="simple")
