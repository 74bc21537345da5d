"""Rendering with the real renderers: sizes, modes, errors, determinism, timeouts, dispatch."""

from __future__ import annotations

import ast
import concurrent.futures
import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sympy
from PIL import Image, ImageDraw

from markup2im.data.render import (
    MANIFEST_COLUMNS,
    assign_filenames,
    read_manifest,
    render_markup_file,
    render_markups,
)
from markup2im.data.render.canvas import BlankImageError, fit_to_canvas, ink_box
from markup2im.data.render.latex import PREAMBLE
from markup2im.errors import ConfigError, RenderError
from markup2im.presets import DOMAINS

CLI = [sys.executable, "-m", "markup2im"]


def decode(png: bytes | None) -> Image.Image:
    assert png is not None
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def pixels(png: bytes | None) -> np.ndarray:
    return np.asarray(decode(png))


def assert_rendered(item, domain: str) -> Image.Image:
    spec = DOMAINS[domain]
    assert item.ok, item.error
    image = decode(item.png)
    assert image.size == (spec.width, spec.height)
    assert image.mode == spec.color_mode
    box = ink_box(image)
    assert box is not None and box[:2] == (0, 0), f"ink must start at the top-left, got {box}"
    return image


# ---- canvas -------------------------------------------------------------------------------------


def test_canvas_crops_to_ink_and_places_it_top_left():
    page = Image.new("L", (200, 100), 255)
    ImageDraw.Draw(page).rectangle([30, 20, 59, 29], fill=0)  # 30 x 10 of ink
    fitted = fit_to_canvas(page, 64, 64, "L")
    assert fitted.image.size == (64, 64) and fitted.image.mode == "L"
    assert not fitted.shrunk and fitted.ink_size == (30, 10)
    array = np.asarray(fitted.image)
    assert (
        (array[:10, :30] == 0).all()
        and (array[10:, :] == 255).all()
        and (array[:, 30:] == 255).all()
    )


def test_canvas_shrinks_only_what_does_not_fit_keeping_the_aspect_ratio():
    page = Image.new("L", (700, 100), 255)
    ImageDraw.Draw(page).rectangle([0, 0, 639, 31], fill=0)  # 640 x 32, twice too wide
    fitted = fit_to_canvas(page, 320, 64, "L")
    assert fitted.shrunk
    assert ink_box(fitted.image) == (0, 0, 320, 16)


def test_canvas_flattens_transparency_onto_white_and_rejects_blank():
    rgba = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # transparent black: blank once flattened
    with pytest.raises(BlankImageError):
        fit_to_canvas(rgba, 32, 32, "RGB")
    ImageDraw.Draw(rgba).rectangle([5, 5, 9, 9], fill=(255, 0, 0, 255))
    fitted = fit_to_canvas(rgba, 32, 32, "RGB")
    assert fitted.image.getpixel((0, 0)) == (255, 0, 0)
    assert fitted.image.getpixel((20, 20)) == (255, 255, 255)


def test_filenames_are_stable_hashes_and_distinct_for_repeated_markup():
    names = assign_filenames(["x^2", "y", "x^2", "x^2"])
    assert names == assign_filenames(["x^2", "y", "x^2", "x^2"])
    assert len(set(names)) == 4
    assert all(len(n) == len("433d71b530.png") and n.endswith(".png") for n in names)
    assert names[0] == assign_filenames(["x^2"])[0]  # the first occurrence is the plain hash


# ---- each domain ---------------------------------------------------------------------------------

MATH_GOOD = [
    r"\frac{a}{b} + \sum_{i=1}^{n} x_i^2",
    r"\begin{pmatrix} a & b \\ c & d \end{pmatrix}",
    r"\sqrt[3]{\alpha + \beta} \leq \left( \int_0^\infty e^{-x} \, dx \right)",
    r"e^{i \pi} + 1 = 0 % a comment cannot hide the end of the display",
]
MATH_BAD = {
    r"\frac{a}{b} \undefinedmacro": "Undefined control sequence",
    r"x^{2": "Missing } inserted",
    r"\begin{pmatrix} a": "",
}


def test_math_renders_known_formulas_and_records_errors():
    markups = MATH_GOOD[:2] + list(MATH_BAD) + MATH_GOOD[2:]
    items = render_markups("math", markups, workers=1, progress=False)
    assert [i.index for i in items] == list(range(len(markups)))
    for item in items:
        if item.markup in MATH_BAD:
            assert not item.ok and item.png is None
            assert MATH_BAD[item.markup] in item.error and item.error
        else:
            assert_rendered(item, "math")
            assert not item.shrunk


def test_math_is_deterministic_and_independent_of_the_batch():
    together = render_markups("math", MATH_GOOD + list(MATH_BAD), workers=1, progress=False)
    again = render_markups("math", MATH_GOOD + list(MATH_BAD), workers=2, progress=False)
    for formula in MATH_GOOD:
        (alone,) = render_markups("math", [formula], workers=1, progress=False)
        first = next(i for i in together if i.markup == formula)
        second = next(i for i in again if i.markup == formula)
        assert first.png == second.png == alone.png


def test_tables_render_to_64x64_grayscale():
    markups = [
        '<table border="1"><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>',
        '<table><tr><td style="background-color: #bbbbbb"><b>x</b></td><td rowspan="2">y</td>'
        "</tr><tr><td>z</td></tr></table>",
        "<table></table>",  # draws nothing
    ]
    items = render_markups("tables", markups, progress=False)
    first = assert_rendered(items[0], "tables")
    assert_rendered(items[1], "tables")
    assert not items[2].ok and "blank" in items[2].error
    (again,) = render_markups("tables", markups[:1], progress=False)
    assert again.png == items[0].png
    assert np.asarray(first).min() < 100  # black ink, not only grey


def test_music_renders_to_448x192_grayscale_and_names_the_bad_file():
    markups = [
        r'{ \clef treble \key g \major \time 3/4 g8[ a] b4 r4 | d4 c8[ b] a4 \bar "|." }',
        r"{ c4 \undefinedcommand d }",
        r"{ \clef bass \time 2/4 c,4 d,8[ e,] | f,2 }",
    ]
    items = render_markups("music", markups, progress=False, workers=1)  # one lilypond call
    assert_rendered(items[0], "music")
    assert_rendered(items[2], "music")
    assert not items[1].ok
    assert items[1].error.startswith("line 1:") and "undefinedcommand" in items[1].error


@pytest.mark.slow
def test_music_is_deterministic_and_independent_of_the_batch():
    melody = r'{ \clef treble \key d \major \time 4/4 d8[ e] fis4 r2 | a1 \bar "|." }'
    together = render_markups("music", [r"{ c'1 }", melody], workers=1, progress=False)
    (alone,) = render_markups("music", [melody], workers=1, progress=False)
    assert together[1].png == alone.png


def test_molecules_render_to_128x128_rgb_with_colour():
    markups = ["CC1=CC(=O)C=CC1=O", "c1ccccc1O", "C1CC", "not a smiles"]
    items = render_markups("molecules", markups, progress=False)
    quinone = assert_rendered(items[0], "molecules")
    assert_rendered(items[1], "molecules")
    array = np.asarray(quinone).astype(int)
    assert ((array[..., 0] - array[..., 2]) > 100).any(), "oxygens are drawn in red"
    assert not items[2].ok and "unclosed ring" in items[2].error
    assert not items[3].ok and "SMILES Parse Error" in items[3].error
    (again,) = render_markups("molecules", markups[:1], progress=False)
    assert again.png == items[0].png


def test_canvas_size_can_be_overridden():
    (item,) = render_markups("math", [r"\sum_{i=1}^{n} i"], width=100, height=40, progress=False)
    assert decode(item.png).size == (100, 40)


def test_unknown_domain_lists_the_known_ones():
    with pytest.raises(ConfigError, match="math, molecules, music, tables"):
        render_markups("chemistry", ["x"], progress=False)


# ---- hangs, huge input ------------------------------------------------------------------------


def test_hanging_latex_formula_is_killed_and_the_batch_goes_on():
    markups = [r"a + b", r"\def\a{\a}\a", r"\frac{1}{2}", r"c"]
    start = time.monotonic()
    items = render_markups("math", markups, timeout=2, workers=1, progress=False)
    elapsed = time.monotonic() - start
    assert elapsed < 8, f"the hang should cost about one timeout, took {elapsed:.1f} s"
    assert not items[1].ok and "timed out" in items[1].error
    for n in (0, 2, 3):
        assert_rendered(items[n], "math")


def test_hanging_molecule_is_killed_and_recorded():
    # RDKit needs minutes to lay out a 3,000-atom chain: only killing the worker stops it
    markups = ["CCO", "C" * 3000, "c1ccccc1"]
    start = time.monotonic()
    items = render_markups("molecules", markups, timeout=2, workers=1, progress=False)
    assert time.monotonic() - start < 10
    assert not items[1].ok and "timed out" in items[1].error
    assert items[0].ok and items[2].ok


@pytest.mark.slow
def test_hanging_lilypond_file_is_killed_and_recorded():
    markups = [r"{ c'4 d' e' f' }", "#(let loop () (loop))", r"{ g'2 a'2 }"]
    start = time.monotonic()
    items = render_markups("music", markups, timeout=4, workers=1, progress=False)
    assert time.monotonic() - start < 30
    assert not items[1].ok and "timed out" in items[1].error
    assert items[0].ok and items[2].ok


def test_a_100kb_formula_renders_or_fails_cleanly():
    huge = " + ".join(["x_{1}"] * 14000)
    assert len(huge) > 100_000
    start = time.monotonic()
    items = render_markups("math", [huge, "y"], timeout=20, workers=1, progress=False)
    assert time.monotonic() - start < 30
    assert items[1].ok
    if items[0].ok:
        assert items[0].shrunk and decode(items[0].png).size == (320, 64)
    else:
        assert items[0].error


# ---- real formulas written by others ---------------------------------------------------------


def sympy_latex_formulas() -> list[str]:
    """The expected outputs of ``latex(...)`` in sympy's own printing tests."""
    source = Path(sympy.__file__).parent / "printing" / "tests" / "test_latex.py"
    found = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            left, right = node.left, node.comparators[0]
            if (
                isinstance(left, ast.Call)
                and getattr(left.func, "id", "") == "latex"
                and isinstance(right, ast.Constant)
                and isinstance(right.value, str)
                and right.value.strip()
            ):
                found.append(right.value)
    return sorted(set(found))


def plain_latex_accepts(formula: str, workdir: Path) -> bool:
    """Does ``latex`` alone compile this formula in the same template, without error?"""
    workdir.mkdir()
    (workdir / "f.tex").write_text(
        PREAMBLE + "\\begin{displaymath}\n" + formula + "\n\\end{displaymath}\n\\end{document}\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        ["latex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "f.tex"],
        cwd=workdir,
        capture_output=True,
        timeout=60,
    )
    return proc.returncode == 0 and b"(1 page" in proc.stdout


@pytest.mark.slow
def test_sympy_formulas_render_at_least_as_often_as_plain_latex_accepts_them(tmp_path):
    formulas = sympy_latex_formulas()
    assert len(formulas) > 500
    sample = random.Random(7).sample(formulas, 40)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        verdicts = pool.map(
            lambda n: plain_latex_accepts(sample[n], tmp_path / f"alone{n}"), range(len(sample))
        )
        accepted = {f for f, ok in zip(sample, verdicts, strict=True) if ok}
    items = render_markups("math", sample, workers=2, progress=False)
    ours = {i.markup for i in items if i.ok}
    blank = {i.markup for i in items if "blank" in i.error}  # e.g. an empty \left. \right.
    assert len(accepted) > 20
    assert accepted - blank <= ours, f"accepted alone but not rendered: {accepted - ours - blank}"
    assert len(ours) >= len(accepted - blank)


# ---- the render command ------------------------------------------------------------------------


def test_render_command_writes_pngs_and_a_manifest_and_loses_no_row(tmp_path):
    markup_file = tmp_path / "formulas.txt"
    markup_file.write_bytes(
        b"x^2\n\n\\frac{a}{b}\n\\undefinedmacro\n\xff\xfe broken utf-8\n   \nx^2\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [*CLI, "render", "--domain", "math", "--markup-file", str(markup_file), "--output-dir",
         str(out), "--workers", "2", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rendered 3 of 5 (failed 2" in proc.stdout and "blank lines skipped 2" in proc.stdout
    assert "skipped 2 blank line(s) (line 2, 6)" in proc.stderr
    rows = read_manifest(out / "manifest.csv")
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [r["line"] for r in rows] == ["1", "3", "4", "5", "7"]
    assert [r["ok"] for r in rows] == ["true", "true", "false", "false", "true"]
    assert "Undefined control sequence" in rows[2]["error"]
    assert f"{markup_file}:5: invalid UTF-8" in rows[3]["error"]
    assert rows[0]["filename"] != rows[4]["filename"]  # the repeated formula keeps its own file
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(r["filename"] for r in rows if r["ok"] == "true")
    assert (out / rows[0]["filename"]).read_bytes() == (out / rows[4]["filename"]).read_bytes()


def test_render_command_fails_with_status_2_when_nothing_renders(tmp_path):
    markup_file = tmp_path / "bad.txt"
    markup_file.write_text("\\undefinedmacro\n\\alsoundefined\n", encoding="utf-8")
    with pytest.raises(RenderError, match="no markup rendered"):
        render_markup_file("math", markup_file, tmp_path / "out", progress=False)
    rows = read_manifest(tmp_path / "out" / "manifest.csv")  # still written, with the errors
    assert [r["ok"] for r in rows] == ["false", "false"]
    proc = subprocess.run(
        [*CLI, "render", "--domain", "math", "--markup-file", str(markup_file),
         "--output-dir", str(tmp_path / "out2")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no markup rendered" in proc.stderr and "Traceback" not in proc.stderr


def test_render_command_rejects_an_unknown_domain(tmp_path):
    markup_file = tmp_path / "m.txt"
    markup_file.write_text("x\n", encoding="utf-8")
    proc = subprocess.run(
        [*CLI, "render", "--domain", "poetry", "--markup-file", str(markup_file),
         "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown domain 'poetry'" in proc.stderr and "math" in proc.stderr
