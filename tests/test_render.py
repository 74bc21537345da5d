"""Rendering with the real renderers: sizes, modes, errors, determinism, timeouts, dispatch."""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import http.server
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sympy
from PIL import Image, ImageDraw

from markup2im.data.render import (
    MANIFEST_COLUMNS,
    assign_filenames,
    html,
    latex,
    process,
    read_manifest,
    render_markup_file,
    render_markups,
)
from markup2im.data.render.canvas import (
    MAX_SHRINK,
    BlankImageError,
    TooSmallError,
    fit_to_canvas,
    ink_box,
)
from markup2im.data.render.latex import PREAMBLE
from markup2im.data.render.process import SANDBOX_HOSTNAME, Limits, run_watched
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


def test_canvas_refuses_what_would_shrink_past_readable():
    page = Image.new("L", (1400, 100), 255)
    ImageDraw.Draw(page).rectangle([0, 0, 1279, 31], fill=0)  # 1280 x 32: 4x too wide
    assert fit_to_canvas(page, 320, 64, "L").shrunk
    ImageDraw.Draw(page).rectangle([0, 0, 1299, 31], fill=0)  # a little more than 4x
    with pytest.raises(TooSmallError, match="too small to read.*1300 x 32.*4.1x.*at most 4x"):
        fit_to_canvas(page, 320, 64, "L")
    assert fit_to_canvas(page, 320, 64, "L", max_shrink=None).shrunk


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


def test_a_100kb_formula_fails_as_too_small_to_read():
    huge = " + ".join(["x_{1}"] * 14000)
    assert len(huge) > 100_000
    items = render_markups("math", [huge, "y"], timeout=20, workers=1, progress=False)
    assert items[1].ok
    # it would become a grey line one pixel high: not an image of its markup
    assert not items[0].ok and items[0].error.startswith("too small to read"), items[0].error
    assert f"at most {MAX_SHRINK:g}x" in items[0].error


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
    # e.g. an empty \left. \right. draws nothing; a very long one shrinks past readable
    blank = {i.markup for i in items if "blank" in i.error or "too small" in i.error}
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


# ---- untrusted markup: the sandbox ---------------------------------------------------------------

LILYPOND_DOCS = Path("/usr/share/doc/lilypond/html/Documentation")


def proc_table() -> dict[int, tuple[int, str, str, list[str]]]:
    """Every process: pid -> (parent pid, state, start time, argv), read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19], argv)
    return table


def descendants(pid: int) -> dict[int, tuple[str, list[str]]]:
    """Processes below ``pid``: pid -> (start time, argv)."""
    table = proc_table()
    found: dict[int, tuple[str, list[str]]] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, start, argv) in table.items():
            if ppid == parent and child not in found:
                found[child] = (start, argv)
                todo.append(child)
    return found


def still_running(processes: dict[int, tuple[str, list[str]]]) -> list[list[str]]:
    """The argv of those ``processes`` that still run (zombies and reused pids do not count)."""
    table = proc_table()
    return [
        argv
        for pid, (start, argv) in processes.items()
        if pid in table and table[pid][2] == start and table[pid][1] != "Z"
    ]


def host_name_in(text: str) -> bool:
    names = {socket.gethostname(), Path("/etc/hostname").read_text().strip()} - {""}
    return any(re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w.-])", text) for n in names)


def test_renderers_run_without_network_home_host_name_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("M2I_TEST_TOKEN", "m2i-token-in-the-environment")
    script = (
        "hostname; cat /etc/hostname; echo homes: $(ls -A /root /home /run | grep -v :); "
        "touch /usr/m2i-x 2>/dev/null || echo system-read-only; touch here && echo workdir-ok; "
        "echo net: $(cut -d: -f1 /proc/net/dev | tail -n +3); env"
    )
    outcome = run_watched(["sh", "-c", script], cwd=tmp_path, timeout=30)
    lines = outcome.output.split("\n")
    assert outcome.returncode == 0, outcome.output
    assert lines[:2] == [SANDBOX_HOSTNAME, SANDBOX_HOSTNAME]
    # homes are empty but for the directories holding Python itself (here a pyenv under /root)
    code = {d.relative_to("/").parts[1] for d in process._code_dirs() if d.parts[1] == "root"}
    assert set(lines[2].split()[1:]) <= code, lines[2]
    assert lines[3:5] == ["system-read-only", "workdir-ok"] and (tmp_path / "here").exists()
    assert lines[5].split() == ["net:", "lo"]  # no network interface but loopback
    assert "m2i-token-in-the-environment" not in outcome.output
    assert not host_name_in(outcome.output)


def test_rendering_stops_with_a_clear_error_where_the_sandbox_cannot_run(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("latex", "dvipng", "prlimit"):
        (bin_dir / program).symlink_to(shutil.which(program))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(RenderError, match=r"`bwrap` is not on PATH.*apt-get install bubblewrap"):
        render_markups("math", ["x"], progress=False)
    markup_file = tmp_path / "m.txt"
    markup_file.write_text("x\n", encoding="utf-8")
    proc = subprocess.run(
        [*CLI, "render", "--domain", "math", "--markup-file", str(markup_file),
         "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "bubblewrap" in proc.stderr and "Traceback" not in proc.stderr
    fake = bin_dir / "bwrap"  # a bwrap that cannot make namespaces (a locked-down container)
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RenderError, match=r"cannot run here: bwrap: No permissions.*namespaces"):
        render_markups("math", ["x"], progress=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to a plain user needs root")
def test_the_sandbox_works_for_a_plain_user(tmp_path):
    # the plain user cannot use this venv (it may live in root's home): system Python and
    # process.py alone, which needs nothing outside the standard library but the error type
    python, source = Path("/usr/bin/python3"), Path(process.__file__)
    if not python.exists() or shutil.which("runuser") is None:
        pytest.skip("needs /usr/bin/python3 and runuser")
    script = f"""
import importlib.util, json, pathlib, sys, tempfile, types
sys.modules["markup2im"] = types.ModuleType("markup2im")
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
load("markup2im.errors", {str(source.parents[2] / "errors.py")!r})
process = load("process", {str(source)!r})
process.check_sandbox()
work = pathlib.Path(tempfile.mkdtemp())
(work / "f.tex").write_text(r"\\documentclass{{article}}\\begin{{document}}$x^2$\\end{{document}}")
tex = process.run_watched(["latex", "-interaction=nonstopmode", "f.tex"], cwd=work, timeout=120)
who = process.run_watched(["sh", "-c", "id -u; hostname; touch /tmp/x; ls /tmp"], cwd=work,
                          timeout=30)
print(json.dumps([tex.returncode, (work / "f.dvi").is_file(), who.output, work.name]))
"""
    proc = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(python), "-c", script],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    returncode, dvi, who, work = json.loads(proc.stdout.strip().splitlines()[-1])
    assert returncode == 0 and dvi
    uid, hostname, *tmp = who.split()
    assert uid != "0" and hostname == SANDBOX_HOSTNAME
    # a private /tmp: its work dir, what it made, and the mount point of this checkout when the
    # checkout itself lies under /tmp (bound back read-only so the package stays importable)
    checkout = source.resolve().parents[3]
    bound = [checkout.relative_to("/tmp").parts[0]] if Path("/tmp") in checkout.parents else []
    assert sorted(tmp) == sorted([work, "x", *bound])


def test_lilypond_scheme_cannot_touch_files_or_read_secrets(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:12]
    secret = f"m2i-secret-{tag}"
    (tmp_path / "secret.txt").write_text(secret + "\n", encoding="utf-8")
    monkeypatch.setenv("M2I_TEST_TOKEN", secret)
    targets = [tmp_path / "touched", Path(tempfile.gettempdir()) / f"m2i-touched-{tag}",
               Path.home() / f"m2i-touched-{tag}", Path.cwd() / f"m2i-touched-{tag}"]  # fmt: skip
    read = "#(use-modules (ice-9 rdelim))\n\\markup #(call-with-input-file {} read-line)"
    markups = {
        "touch": f'#(system "touch {" ".join(map(str, targets))}")\n{{ c\'4 }}',
        "benign": "{ c'4 }",
        "read host": read.format('"/etc/hostname"'),
        "host": "\\markup #(gethostname)",
        "neutral host": f'\\markup "{SANDBOX_HOSTNAME}"',
        "real host": f'\\markup "{socket.gethostname()}"',  # what a leak would look like
        "read secret": read.format(f'"{tmp_path / "secret.txt"}"'),
        "read bashrc": read.format(f'"{Path.home() / ".bashrc"}"'),
        "environment": '\\markup #(or (getenv "M2I_TEST_TOKEN") "none")',
        "none": '\\markup "none"',
    }
    try:
        items = render_markups("music", list(markups.values()), workers=1, progress=False)
        assert not [t for t in targets if t.exists()]
    finally:
        for target in targets:
            target.unlink(missing_ok=True)
    got = dict(zip(markups, items, strict=True))
    for name in ("benign", "neutral host", "real host", "none"):
        assert got[name].ok, got[name].error
    assert got["touch"].png == got["benign"].png  # harmless: the music, and nothing else
    assert got["read host"].png == got["host"].png == got["neutral host"].png
    assert got["neutral host"].png != got["real host"].png
    assert got["environment"].png == got["none"].png
    assert not got["read secret"].ok and not got["read bashrc"].ok
    for item in items:
        assert secret not in item.error and not host_name_in(item.error), item.error


def test_latex_reads_no_file_outside_its_run_and_leaks_none_into_the_manifest(tmp_path):
    secret = f"msecret{uuid.uuid4().hex[:10]}"
    (tmp_path / "secret.tex").write_text(secret + "\n", encoding="utf-8")
    visible = Path("/etc/debian_version")  # readable in the sandbox: TeX itself must refuse it
    catcodes = r"\catcode`\#=12 \catcode`\%=12 \catcode`\_=12 \catcode`\^=12 \catcode`\~=12 "
    relative = "../" * 12 + str(tmp_path / "secret.tex").lstrip("/")
    formulas = [
        r"\text{\input{/etc/hostname}}",
        rf"\text{{\input{{{visible}}}}}",
        rf"\text{{{catcodes}\input{{{Path.home() / '.bashrc'}}}}}",
        rf"\text{{{catcodes}\input{{{tmp_path / 'secret.tex'}}}}}",
        rf"\text{{\input{{{relative}}}}}",
        r"\text{\openin5=/etc/hostname \read5 to\x \x}",
        rf"\text{{\immediate\openout3={tmp_path}/written.tex \immediate\write3{{x}}}} x",
        rf"\text{{\immediate\write18{{touch {tmp_path}/shell}}}} y",
        r"\frac{a}{b}",
    ]
    markup_file = tmp_path / "attacks.txt"
    markup_file.write_text("\n".join(formulas) + "\n", encoding="utf-8")
    render_markup_file("math", markup_file, tmp_path / "out", workers=1, progress=False)
    manifest = (tmp_path / "out" / "manifest.csv").read_text(encoding="utf-8")
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [r["ok"] for r in rows] == ["false"] * 7 + ["true", "true"]
    errors = " ".join(r["error"] for r in rows)
    assert secret not in manifest and not host_name_in(errors)
    assert visible.read_text().strip() not in errors
    bashrc = Path.home() / ".bashrc"
    lines = bashrc.read_text(errors="replace").splitlines() if bashrc.is_file() else []
    assert not [ln for ln in lines if len(ln.strip()) > 15 and ln.strip() in manifest]
    assert not (tmp_path / "written.tex").exists() and not (tmp_path / "shell").exists()
    images = {r["markup"]: tmp_path / "out" / r["filename"] for r in rows if r["ok"] == "true"}
    (y,) = render_markups("math", ["y"], progress=False)  # the shell escape only left its "y"
    assert images[formulas[7]].read_bytes() == y.png


def test_html_fetches_nothing_over_the_network(tmp_path):
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    stop = threading.Timer(300, server.shutdown)  # stops itself even if this test hangs
    stop.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        table = (
            f'<table><tr><td>a<img src="{url}/image.png"></td>'
            f'<td style="background-image: url({url}/background.png)">b</td></tr></table>'
            f'<link rel="stylesheet" href="{url}/style.css">'
        )
        items = render_markups("tables", [table, "<b>x</b>"], workers=1, progress=False)
        assert requests == [] and items[1].ok
        # the same page outside the sandbox does reach the server: the check above can fail
        (tmp_path / "page.html").write_text(html.page(table), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        subprocess.run(
            ["wkhtmltoimage", "--quiet", "--disable-javascript", "page.html", "page.png"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert requests
    finally:
        stop.cancel()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killing_render_leaves_no_renderer_running(tmp_path, signum):
    markup_file = tmp_path / "loop.txt"
    markup_file.write_text("\\def\\x{\\x}\\x\nx^2\n", encoding="utf-8")
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(
            [*CLI, "render", "--domain", "math", "--markup-file", str(markup_file),
             "--output-dir", str(tmp_path / "out"), "--workers", "1", "--timeout", "600"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    below: dict[int, tuple[str, list[str]]] = {}
    try:
        deadline = time.monotonic() + 120
        while not any(os.path.basename(argv[0]) == "latex" for _, argv in below.values()):
            assert proc.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline, "latex never started"
            time.sleep(0.1)
            below = descendants(proc.pid)
        proc.send_signal(signum)
        proc.wait(timeout=60)
        if signum != signal.SIGKILL:  # stopped as the signal asks, not left to die
            assert proc.returncode == 128 + signum or proc.returncode == -signum
            assert proc.returncode == (130 if signum == signal.SIGINT else 143)
        deadline = time.monotonic() + 20
        while still_running(below) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(below) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in below if still_running(below) else ():  # never leave a looping latex behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---- LaTeX: one formula cannot change the next --------------------------------------------------

LEAKS = [
    r"\global\let\alpha\beta x",
    r"\gdef\alpha{\beta} x",
    r"\globaldefs=1 \let\alpha\beta x",
    r"\csname global\endcsname\let\alpha\beta x",
    r"\glob^^61l\let\alpha\beta x",
    r"\begin{global}\let\alpha\beta\end{global} x",
    r"x \end{displaymath} \let\alpha\beta \begin{displaymath} y",
    r"\special{color push rgb 0.7 0.7 0.7} x",
    r"\fontdimen22\textfont2=30pt x",
]


def test_a_formula_cannot_change_how_the_next_one_renders(monkeypatch):
    followers = [rf"\alpha + \frac{{1}}{{2}} + {n}" for n in range(len(LEAKS))]
    batch = [f for pair in zip(LEAKS, followers, strict=True) for f in pair]
    clean = render_markups("math", followers, workers=1, progress=False)
    together = render_markups("math", batch, workers=1, batch_size=len(batch), progress=False)
    for n in range(len(followers)):
        assert together[2 * n + 1].ok and together[2 * n + 1].png == clean[n].png, LEAKS[n]
    assert not any(latex.can_share(f) for f in LEAKS)
    assert all(latex.can_share(f) for f in MATH_GOOD + followers)
    # without compiling them alone, the first one does leak: the comparison above can fail
    monkeypatch.setattr(latex, "can_share", lambda formula: True)
    leaked = render_markups("math", batch[:2], workers=1, batch_size=2, progress=False)
    assert leaked[1].ok and leaked[1].png != clean[0].png


def test_most_real_formulas_still_share_a_document():
    formulas = sympy_latex_formulas()
    alone = [f for f in formulas if not latex.can_share(f)]
    assert len(alone) < 0.05 * len(formulas), alone[:20]


# ---- music from real scores ----------------------------------------------------------------------


def lilypond_doc_snippets() -> list[str]:
    """The music of LilyPond's own documentation examples (Debian's lilypond-doc-html)."""
    found = []
    for path in sorted(LILYPOND_DOCS.glob("*/lily-*.ly")):
        text = path.read_text(encoding="utf-8", errors="replace")
        match = re.search(r"% ly snippet:\n% \*+\n(.*?)\n% \*+\n% end ly snippet", text, re.S)
        if match:  # lilypond-book's own bookkeeping lines are not part of the example
            found.append(re.sub(r"^\\sourcefile(?:line|name) .*\n", "", match.group(1), flags=re.M))
    return found


@pytest.mark.slow
def test_real_lilypond_snippets_render_at_least_nine_in_ten():
    if not LILYPOND_DOCS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{LILYPOND_DOCS} missing: run scripts/setup.sh --test (and check that dpkg does "
                "not exclude /usr/share/doc, as slim container images do)"
            )
        pytest.skip("needs the Debian package lilypond-doc-html (scripts/setup.sh --test)")
    snippets = lilypond_doc_snippets()
    assert len(snippets) > 1000
    sample = random.Random(11).sample(snippets, 30)
    items = render_markups("music", sample, workers=2, timeout=60, progress=False)
    failures = [i.error for i in items if not i.ok]
    assert len(failures) <= 3, failures
    # the reasons left: an include the docs ship elsewhere, an example of an error, a score
    # too tall for 448 x 192, no music at all; never "spans pages"
    assert not [e for e in failures if "pages" in e or not e], failures


def test_python_under_tmp_stays_visible_in_the_sandbox(tmp_path: Path, monkeypatch) -> None:
    """A checkout or virtualenv under /tmp (CI clones there) is bound back over the empty /tmp."""
    from markup2im.data.render import process

    venv = Path(tempfile.mkdtemp(prefix="venv-", dir="/tmp"))
    try:
        monkeypatch.setattr(process, "_code_dirs", lambda: [venv])
        argv = process.sandbox_argv(["true"], workdir=tmp_path, cwd=tmp_path, mask_fds={})
        binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
        assert str(venv) in binds
        assert argv.index("/tmp") < argv.index(str(venv))  # bound after the empty /tmp
    finally:
        shutil.rmtree(venv, ignore_errors=True)


# ---- items cannot reach each other ---------------------------------------------------------------

# Scheme that walks every directory it can see below /tmp, the temporary directory and the parent
# of its own: it overwrites every LilyPond source and image of another item it finds (with music
# reading PWNED), leaves a file in every directory, and shows the first line of every other
# item's source it could read (or "none").
SCHEME_ATTACK = r"""#(use-modules (ice-9 ftw) (ice-9 rdelim) (srfi srfi-1))
#(define own (getcwd))
#(define (mine? path) (string-prefix? (string-append own "/") path))
#(define (own-batch-file? path) (string-prefix? (string-append own "/m1.") path))
#(define found '())
#(define (try thunk) (catch #t thunk (lambda _ #f)))
#(define (visit path stat flag)
   (cond
    ((and (eq? flag 'directory) (not (string=? path own)))
     (try (lambda () (call-with-output-file (string-append path "/PWNED.ly")
                       (lambda (p) (display "x" p))))))
    ((string-suffix? "/PWNED.ly" path) #t)  ; its own, left in its private /tmp
    ((and (eq? flag 'regular) (or (not (mine? path)) (and (mine? path) (not (own-batch-file? path))
                                                        (string-prefix? (string-append own "/m") path))))
     (let ((line (try (lambda () (call-with-input-file path read-line)))))
       (when (and (string? line) (string-suffix? ".ly" path)) (set! found (cons line found))))
     (try (lambda () (call-with-output-file path
                       (lambda (p) (display (if (string-suffix? ".ly" path)
                                                "\\markup \"PWNED\"" "PWNED") p)))))))
   #t)
#(for-each (lambda (top) (try (lambda () (ftw top visit))))
           (list "/tmp" (or (getenv "TMPDIR") "/tmp") (dirname own)))
\markup #(if (null? found) "none" (string-join found " "))
"""


def test_a_lilypond_item_cannot_read_or_write_another_items_files():
    victims = [r"{ c'4 d'4 e'2 }", r"{ g'1 }"]
    alone = [render_markups("music", [v], workers=1, progress=False)[0] for v in victims]
    (none,) = render_markups("music", ['\\markup "none"'], workers=1, progress=False)
    # one worker: the three items run one after the other, as they would in one batch
    items = render_markups(
        "music", [victims[0], SCHEME_ATTACK, victims[1]], workers=1, progress=False
    )
    assert items[0].ok and items[0].png == alone[0].png, items[0].error
    assert items[2].ok and items[2].png == alone[1].png, items[2].error
    assert items[1].ok and items[1].png == none.png, "it read another item's source"


def test_a_renderer_run_sees_and_writes_nothing_but_its_own_work_dir(tmp_path, monkeypatch):
    # the class: whatever a renderer does, it reaches only its own directory, not its siblings
    # or the temporary directory that holds every item's
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    root = Path(tempfile.mkdtemp(prefix="markup2im-render-"))
    mine, other = root / "item0", root / "item1"
    mine.mkdir()
    other.mkdir()
    (other / "score.ly").write_text("victim\n", encoding="utf-8")
    script = (
        'for d in .. ../item1 ../.. /tmp "$TMPDIR" ' + str(root) + " " + str(other) + "; do "
        'touch "$d/pwned" 2>/dev/null && echo wrote $d; done; '
        "cat ../item1/score.ly " + str(other / "score.ly") + " 2>/dev/null; "
        "ls -A .. " + str(root) + " 2>/dev/null; touch mine && echo own-ok"
    )
    outcome = run_watched(["sh", "-c", script], cwd=mine, timeout=30)
    assert outcome.returncode == 0, outcome.output
    assert "victim" not in outcome.output and "item1" not in outcome.output, outcome.output
    assert (other / "score.ly").read_text(encoding="utf-8") == "victim\n"
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert made == sorted(
        str(p.relative_to(tmp_path)) for p in [tmp, root, mine, other, other / "score.ly",
                                               mine / "mine", mine / ".runtime"]
    ) or made == sorted(  # (.runtime only where renderer_env made it)
        str(p.relative_to(tmp_path)) for p in [tmp, root, mine, other, other / "score.ly",
                                               mine / "mine"]
    ), made  # fmt: skip
    assert outcome.output.strip().endswith("own-ok")


def test_html_items_render_each_in_a_directory_of_its_own():
    # a page that points at the files another item would have had beside it
    peek = '<img src="item0.png"><img src="../item0/page.png"><iframe src="item0.html"></iframe>x'
    (alone,) = render_markups("tables", [peek], workers=1, progress=False)
    items = render_markups("tables", ["<b>victim</b>", peek], workers=1, progress=False)
    assert items[1].png == alone.png and items[1].error == alone.error


# ---- LaTeX: only known-safe formulas share a document -------------------------------------------

# each changes the next formula of a shared document, and none uses a command the old list named
GLOBAL_STATE = [
    r"\footnotemark x",  # the footnote counter (global) numbers the next one
    r"\ht\strutbox=30pt \mathstrut x",  # box dimensions are global in TeX
    r"\thepage",  # the page number: differs with the position in a document
    r"\the\inputlineno",  # the input line: differs with the position too
]


@pytest.mark.parametrize("formula", GLOBAL_STATE)
def test_a_formula_outside_the_safe_list_renders_alone_and_changes_nothing(formula):
    follower = r"\footnotemark \strut \alpha + \frac{1}{2}"
    assert not latex.can_share(formula)
    (alone,) = render_markups("math", [formula], workers=1, progress=False)
    batch = ["y", formula, "y", r"\frac{a}{b}"]
    together = render_markups("math", batch, workers=1, batch_size=4, progress=False)
    assert together[1].png == alone.png and together[1].error == alone.error
    (clean,) = render_markups("math", [r"\frac{a}{b}"], workers=1, progress=False)
    assert together[3].png == clean.png
    # the follower uses unsafe commands itself: it renders alone, whatever came before
    pair = render_markups("math", [formula, follower], workers=1, batch_size=2, progress=False)
    (follower_alone,) = render_markups("math", [follower], workers=1, progress=False)
    assert pair[1].png == follower_alone.png


def test_any_command_outside_the_safe_list_keeps_a_formula_alone():
    rng = random.Random(3)
    words = ["foo", "thepage", "global", "ht", "the", "stepcounter", "input", "relax", "count"]
    words += [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(50)
    ]
    for word in words:
        if word in latex.SAFE_COMMANDS:
            continue
        for formula in (rf"\{word} x", rf"x^{{\{word}}}", rf"\frac{{\{word}}}{{2}}"):
            assert not latex.can_share(formula), formula
    for formula in ("x $ y", "#1", "x^^41", "x \\", "x }{ y", "x \u00e9", r"\begin{document}"):
        assert not latex.can_share(formula), formula
    for formula in MATH_GOOD + [r"\text{a \% b} \{x\}", r"\begin{cases} a & b \\ c \end{cases}"]:
        assert latex.can_share(formula), formula


def test_ending_the_document_is_reported_as_such():
    for formula in (r"x \end{displaymath}\end{document}", r"x \end{displaymath}\stop"):
        (item,) = render_markups("math", [formula], workers=1, progress=False)
        assert not item.ok and "ended the document early" in item.error, item.error


# ---- memory and disk bounds ------------------------------------------------------------------------

SMALL = Limits(memory_mb=600, disk_mb=20)  # small enough for a test machine shared with others


def test_a_lilypond_memory_or_disk_bomb_fails_its_item_and_names_the_limit():
    memory = "#(define big (make-list 200000000 1))\n{ c'4 }"  # ~3 GiB of pairs
    disk = (  # 100 files of 1 MB: five times the limit
        '#(let loop ((n 0)) (when (< n 100) (call-with-output-file (format #f "f~a" n) '
        "(lambda (p) (display (make-string 1000000 #\\x) p))) (loop (+ n 1))))\n{ c'4 }"
    )
    start = time.monotonic()
    items = render_markups(
        "music", ["{ c'4 }", memory, disk, "{ d'4 }"], workers=1, limits=SMALL, timeout=30,
        progress=False,
    )  # fmt: skip
    assert time.monotonic() - start < 120
    assert items[0].ok and items[3].ok
    assert not items[1].ok and "memory limit" in items[1].error and "600 MiB" in items[1].error
    assert not items[2].ok and "disk limit" in items[2].error and "20 MiB" in items[2].error


def test_a_huge_molecule_fails_at_the_memory_limit_and_the_rest_draw():
    items = render_markups(
        "molecules", ["CCO", "C" * 2_000_000, "c1ccccc1"], workers=1, timeout=30,
        limits=Limits(memory_mb=700), progress=False,
    )  # fmt: skip
    assert items[0].ok and items[2].ok
    assert not items[1].ok and "memory limit" in items[1].error and "700 MiB" in items[1].error


def test_a_single_huge_file_stops_at_the_disk_limit(tmp_path):
    outcome = run_watched(
        ["sh", "-c", "head -c 50000000 /dev/zero > big; echo done"],
        cwd=tmp_path,
        timeout=30,
        limits=Limits(disk_mb=5),
    )
    assert (tmp_path / "big").stat().st_size <= 5 * 1024 * 1024
    assert "disk limit reached" in outcome.limit and "5 MiB" in outcome.limit


def test_limits_and_canvas_sizes_are_checked(tmp_path):
    for bad in ({"memory_mb": 0}, {"disk_mb": -1}, {"memory_mb": 1.5}, {"disk_mb": 10**9}):
        with pytest.raises(RenderError, match="limit must be a whole number of MiB"):
            Limits(**bad)
    with pytest.raises(RenderError, match="1..4096 pixels"):
        render_markups("math", ["x"], width=100_000, progress=False)
    markup_file = tmp_path / "m.txt"
    markup_file.write_text("x\n", encoding="utf-8")
    for flag in ("--width", "--height"):
        proc = subprocess.run(
            [*CLI, "render", "--domain", "math", "--markup-file", str(markup_file),
             "--output-dir", str(tmp_path / "out"), flag, "100000"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and "at most 4096" in proc.stderr
    proc = subprocess.run(
        [*CLI, "render", "--domain", "math", "--markup-file", str(markup_file),
         "--output-dir", str(tmp_path / "out"), "--memory-limit", "2048", "--disk-limit", "64"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_the_default_limits_let_real_items_of_every_domain_through():
    from markup2im.data.synth import generate

    for domain in ("math", "tables", "molecules", "music"):
        markups = generate(domain, 24 if domain == "music" else 100, seed=5)
        items = render_markups(domain, markups, workers=2, progress=False)
        limited = [i.error for i in items if "limit" in i.error]
        assert not limited, (domain, limited)
