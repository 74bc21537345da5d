"""``markup2im draw`` (markup2im.drawing): one markup and its GIF, a markup file gives one image
per line drawn as single draws with seeds seed, seed + 1, ..., the command line draws what the
pipeline draws, and too-long markup is truncated with a warning that says by how much. (The
drawing itself, seeds, batches and frames: tests/test_pipeline.py.)"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import HEIGHT, MAX_MARKUP, WIDTH

from markup2im.cli import main
from markup2im.data.markup_files import MarkupFile
from markup2im.data.render import assign_filenames
from markup2im.drawing import manifest_csv
from markup2im.model import Markup2ImModel
from markup2im.models.encoder import OFFLINE, MarkupEncoder
from markup2im.pipeline import Markup2ImPipeline

FORMULAS = [r"x^2+y_1", r"\frac{1}{y}", r"a-b=c"]
LONG = "x+" * 40  # 80 bytes: 48 over the tiny model's 32-token limit
CLI_TIMEOUT = 300  # only against a hang


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def draw_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "markup2im", "draw", *map(str, args)],
        cwd=cwd,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def pixels(image: Image.Image | Path) -> np.ndarray:
    if isinstance(image, Path):
        with Image.open(image) as opened:
            opened.load()
            return np.asarray(opened)
    return np.asarray(image)


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved, untrained tiny model: for the errors, which need no drawing."""
    import torch

    torch.manual_seed(0)
    model = Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=16, width=64, channels=1,
        max_markup_length=16,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("untrained") / "model"
    model.save_pretrained(path)
    return path


# ---- errors, before any drawing ----------------------------------------------------------------


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_missing_model_dir_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code, err = run_main(["draw", "--model-dir", str(tmp_path / "nowhere"), "x"], capsys)
    assert code == 2 and "does not exist" in err and "nowhere" in err


def test_damaged_model_dir_names_the_missing_file(
    untrained_dir: Path, tmp_path: Path, capsys
) -> None:
    damaged = tmp_path / "model"
    shutil.copytree(untrained_dir, damaged)
    (damaged / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    output = str(tmp_path / "o.png")
    code, err = run_main(["draw", "--model-dir", str(damaged), "x", "--output", output], capsys)
    assert code == 2 and "incomplete" in err
    assert "denoiser/diffusion_pytorch_model.safetensors" in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give either MARKUP or --markup-file"),
        (["x", "--markup-file", "f.txt"], "give either MARKUP or --markup-file"),
        (["--markup-file", "f.txt"], "--markup-file needs --output-dir"),
        (["--markup-file", "f.txt", "--output-dir", "o", "--gif", "a.gif"], "--output and --gif"),
        (["x", "--output-dir", "o"], "--output-dir and --gifs are for --markup-file"),
        (["x", "--seed", "-1"], "must be >= 0"),
        (["x", "--eps-scale", "0"], "argument --eps-scale: must be > 0, got 0"),
        (["x", "--eps-scale", "k=1,c=2"], "argument --eps-scale: unknown keys ['c']"),
        (["x", "--eps-scale", "big"], "argument --eps-scale: expected a number or k=...,b=..."),
    ],
)
def test_flags_that_do_not_go_together(
    extra: list[str], message: str, untrained_dir: Path, capsys
) -> None:
    code, err = run_main(["draw", "--model-dir", str(untrained_dir), *extra], capsys)
    assert code == 2 and message in err


def test_output_must_be_a_png(untrained_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = run_main(
        ["draw", "--model-dir", str(untrained_dir), "x", "--output", str(tmp_path / "o.jpg")],
        capsys,
    )
    assert code == 2 and "ends in .png" in err


def test_eps_scale_reaches_the_drawing(untrained_dir: Path, tmp_path: Path, capsys) -> None:
    """draw --eps-scale draws what the pipeline draws with that eps_scale (one markup, and each
    line of a file as a single draw with seed + i), and says so."""
    pipe = Markup2ImPipeline.from_pretrained(untrained_dir, device="cpu")
    code = main([
        "draw", "--model-dir", str(untrained_dir), FORMULAS[0], "--output",
        str(tmp_path / "one.png"), "--steps", "3", "--seed", "1", "--eps-scale", "1.05",
    ])  # fmt: skip
    assert code == 0
    assert "ddim 3 steps, eps scale 1.05, seed 1" in capsys.readouterr().out
    scaled = pipe(FORMULAS[0], steps=3, seed=1, eps_scale=1.05).images[0]
    assert np.array_equal(pixels(tmp_path / "one.png"), pixels(scaled))
    assert not np.array_equal(pixels(scaled), pixels(pipe(FORMULAS[0], steps=3, seed=1).images[0]))

    (tmp_path / "f.txt").write_text("\n".join(FORMULAS[:2]) + "\n", encoding="utf-8")
    code = main([
        "draw", "--model-dir", str(untrained_dir), "--markup-file", str(tmp_path / "f.txt"),
        "--output-dir", str(tmp_path / "out"), "--steps", "3", "--seed", "4", "--batch-size", "1",
        "--eps-scale", "k=1e-4,b=1.02",
    ])  # fmt: skip
    assert code == 0
    assert "(ddim, 3 steps, eps scale k=0.0001,b=1.02, seeds 4..5)" in capsys.readouterr().out
    names = assign_filenames(FORMULAS[:2])
    for i, markup in enumerate(FORMULAS[:2]):
        single = pipe(markup, steps=3, seed=4 + i, eps_scale={"k": 1e-4, "b": 1.02}).images[0]
        assert np.array_equal(pixels(tmp_path / "out" / names[i]), pixels(single))


def test_guidance_scale_reaches_the_drawing(untrained_dir: Path, tmp_path: Path, capsys) -> None:
    """draw --guidance-scale draws what the pipeline draws with that scale, and says so."""
    pipe = Markup2ImPipeline.from_pretrained(untrained_dir, device="cpu")
    code = main([
        "draw", "--model-dir", str(untrained_dir), FORMULAS[0], "--output",
        str(tmp_path / "one.png"), "--steps", "3", "--seed", "1", "--guidance-scale", "3",
    ])  # fmt: skip
    assert code == 0
    assert "ddim 3 steps, guidance scale 3, seed 1" in capsys.readouterr().out
    guided = pipe(FORMULAS[0], steps=3, seed=1, guidance_scale=3).images[0]
    assert np.array_equal(pixels(tmp_path / "one.png"), pixels(guided))
    (tmp_path / "f.txt").write_text(FORMULAS[1] + "\n", encoding="utf-8")
    code = main([
        "draw", "--model-dir", str(untrained_dir), "--markup-file", str(tmp_path / "f.txt"),
        "--output-dir", str(tmp_path / "out"), "--steps", "3", "--seed", "4",
        "--guidance-scale", "0",
    ])  # fmt: skip
    assert code == 0
    assert "(ddim, 3 steps, guidance scale 0, seeds 4..4)" in capsys.readouterr().out
    unconditional = pipe("", steps=3, seed=4).images[0]
    drawn = tmp_path / "out" / assign_filenames(FORMULAS[1:2])[0]
    assert np.array_equal(pixels(drawn), pixels(unconditional))


def test_encoder_says_by_how_many_tokens_it_truncates(caplog) -> None:
    enc = MarkupEncoder.load(OFFLINE, max_length=4)
    assert enc.overflow(["abcdefgh", "ab", "abcde"]) == [4, 0, 1]
    assert enc.num_encoded == 0  # overflow only looks
    with caplog.at_level(logging.INFO, logger="markup2im.models.encoder"):
        enc(["abcdefgh", "ab"])
        enc(["abcdefgh", "abcdefghij"])
    assert enc.last_truncated_tokens == [4, 6]
    messages = [r.getMessage() for r in caplog.records]
    assert any("truncated 1 of 2 markups to 4 tokens, by 4 tokens" in m for m in messages)
    assert any("by 4 to 6 tokens" in m for m in messages), messages


def test_markup_no_model_can_read_is_a_clear_error(
    untrained_dir: Path, tmp_path: Path, capsys
) -> None:
    """Bytes that are not UTF-8 on the command line reach Python as lone surrogates
    (``$'a\\xffb'`` is "a\\udcffb"), which stopped draw with a UnicodeEncodeError traceback."""
    for markup, expected in (("a\udcffb", "lone surrogate U+DCFF at character 1"),
                             ("\ud800", "lone surrogate U+D800 at character 0"),
                             ("x\x00", "NUL character at character 1")):  # fmt: skip
        output = tmp_path / "o.png"
        code, err = run_main(
            ["draw", "--model-dir", str(untrained_dir), markup, "--output", str(output)], capsys
        )
        assert code == 2 and f"the markup to draw holds a {expected}" in err, err
        assert not output.exists()


def test_a_line_no_model_can_read_fails_its_row_only(
    untrained_dir: Path, tmp_path: Path, capsys
) -> None:
    """A lone surrogate in one .jsonl line stopped draw with a UnicodeEncodeError traceback."""
    source = tmp_path / "f.jsonl"
    markups = [FORMULAS[0], "a\ud800b", "c\x00d", FORMULAS[1]]
    source.write_text("".join(json.dumps({"markup": m}) + "\n" for m in markups))
    out = tmp_path / "out"
    code = main([
        "draw", "--model-dir", str(untrained_dir), "--markup-file", str(source),
        "--output-dir", str(out), "--steps", "2",
    ])  # fmt: skip
    assert code == 0
    assert "manifest: 2 of 4 markups drawn" in capsys.readouterr().out
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["line"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[1]["error"].startswith(f"{source}:2: lone surrogate U+D800")
    assert rows[2]["error"].startswith(f"{source}:3: NUL character")
    assert [r["markup"] for r in rows[1:3]] == ["a\ufffdb", "c\ufffdd"]
    assert [r["filename"] for r in rows[1:3]] == ["", ""]
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert drawn == sorted(r["filename"] for r in rows if r["filename"])
    assert len(drawn) == 2


def test_manifest_replaces_unwritable_text_and_says_so_in_the_row(tmp_path: Path) -> None:
    """A MarkupFile made in Python may hold any str; its manifest is still written."""
    source = MarkupFile(tmp_path / "f.txt", ["x", "a\ud800\x00"], [1, 2], {1: "bad \udcff"})
    text = manifest_csv(source, ["a.png", "b.png"], [0, 0], seed=5)
    rows = list(csv.DictReader(io.StringIO(text.encode("utf-8").decode("utf-8"))))
    assert rows[0]["error"] == "" and rows[0]["markup"] == "x"
    assert rows[1]["markup"] == "a\ufffd\ufffd"
    assert rows[1]["error"] == (
        "bad \ufffd; 3 character(s) that UTF-8 or a renderer cannot take replaced by U+FFFD"
    )


# ---- drawing with a trained model --------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Markup2ImPipeline:
    return Markup2ImPipeline.from_pretrained(tiny_model_dir, device="cpu")


@pytest.mark.slow
def test_cli_draws_one_markup_and_its_gif(
    tiny_model_dir: Path, pipe: Markup2ImPipeline, tmp_path: Path
) -> None:
    proc = draw_cli(
        "--model-dir", tiny_model_dir, FORMULAS[1], "--output", "out.png", "--gif", "out.gif",
        "--steps", "10", "--seed", "3", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote out.png: 64x16 L image, ddim 10 steps, seed 3" in proc.stdout
    assert "wrote out.gif: denoising GIF, 10 frames" in proc.stdout
    assert "draw ddim" in proc.stderr  # the progress bar
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (WIDTH, HEIGHT) and image.mode == "L"
    with Image.open(tmp_path / "out.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames > 1
    # the command line draws what the API draws
    api = pipe(FORMULAS[1], steps=10, seed=3).images[0]
    assert np.array_equal(pixels(tmp_path / "out.png"), pixels(api))


@pytest.mark.slow
def test_cli_markup_file_one_image_per_line_and_truncation_warning(
    tiny_model_dir: Path, pipe: Markup2ImPipeline, tmp_path: Path
) -> None:
    lines = [FORMULAS[0], "", LONG, FORMULAS[2]]
    (tmp_path / "f.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = draw_cli(
        "--model-dir", tiny_model_dir, "--markup-file", "f.txt", "--output-dir", "out",
        "--steps", "6", "--seed", "7", "--gifs", "--batch-size", "2", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    markups = [FORMULAS[0], LONG, FORMULAS[2]]
    names = assign_filenames(markups)  # the names `markup2im render` gives the same file
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    assert len(list(out.glob("*.gif"))) == 3
    for name in names:
        assert f"wrote {out.relative_to(tmp_path) / name}: line" in proc.stdout
    over = len(LONG) - MAX_MARKUP
    assert f"truncated 1 of 2 markups to {MAX_MARKUP} tokens, by {over} tokens" in proc.stderr
    assert "truncated_tokens column" in proc.stderr
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["line"] for r in rows] == ["1", "3", "4"]
    assert [r["seed"] for r in rows] == ["7", "8", "9"]
    assert [r["truncated_tokens"] for r in rows] == ["0", str(over), "0"]
    assert [r["markup"] for r in rows] == markups
    # markup i of the file is drawn with seed + i, so the last line is a single draw at seed 9
    single = pipe(FORMULAS[2], steps=6, seed=9).images[0]
    diff = np.abs(pixels(out / names[2]).astype(int) - pixels(single).astype(int))
    assert diff.max() <= 1


@pytest.mark.slow
def test_jsonl_markup_file(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "f.jsonl"
    source.write_text("".join(json.dumps({"markup": m}) + "\n" for m in FORMULAS[:2]))
    code = main([
        "draw", "--model-dir", str(tiny_model_dir), "--markup-file", str(source),
        "--output-dir", str(tmp_path / "out"), "--steps", "4",
    ])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(
        assign_filenames(FORMULAS[:2])
    )
    assert "manifest: 2 of 2 markups drawn as 64x16 L images" in capsys.readouterr().out
