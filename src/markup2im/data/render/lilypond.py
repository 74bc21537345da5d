"""LilyPond music: ``lilypond --png``, one process per item.

Each markup is a LilyPond source. A preamble placed before it sets a small staff, a wide short page,
no indent, no headers, footers, page numbers or tagline, so that a short melody lands on one staff
that fits 448 x 192. A longer score goes on one page as tall as its music
(``ly:one-page-breaking``, which also ignores ``\\pageBreak``), and is cropped and fitted like any
rendering. Settings in the markup itself come later and win; a score that they still spread over
several pages (its own page breaking, book parts), or that crashes LilyPond's one-page breaking,
is compiled again with LilyPond's own page breaking and ``-dcrop``, which draws the ink of all
its pages as one image.

A LilyPond file is a program (its Scheme can open, write and delete files, and change the
interpreter for the files after it), so no two items share a ``lilypond`` process or a work
directory: each runs alone in a sandbox that sees only its own directory. This costs LilyPond's
start (about 1.5 s of CPU) per item instead of once per batch (a file costs about 0.35 s), and
the workers run items in parallel.
"""

from __future__ import annotations

import re
from pathlib import Path

from markup2im.data.render.base import (
    BatchContext,
    Raw,
    clip,
    crash_note,
    open_image,
    require_programs,
    run_dir,
    timeout_error,
)
from markup2im.data.render.process import renderer_env, run_watched

BATCH_SIZE = 1  # one process per item: LilyPond's Scheme could reach the other items
RESOLUTION = 110  # dpi of the PNG
STAFF_SIZE = 16  # points; LilyPond's default is 20
# LilyPond needs ~2.5 s of CPU to start; its "Processing `x.ly'" line marks when the item begins,
# so the per-item clock only starts after it, and starting up gets its own allowance.
STARTUP_SECONDS = 60.0

_ONE_PAGE = "  page-breaking = #ly:one-page-breaking\n"
PREAMBLE = f"""\\version "2.24.0"
#(set-global-staff-size {STAFF_SIZE})
\\header {{ tagline = ##f }}
\\paper {{
  paper-width = 160\\mm
  paper-height = 80\\mm
  indent = 0
  top-margin = 2\\mm
  bottom-margin = 2\\mm
  left-margin = 2\\mm
  right-margin = 2\\mm
  ragged-right = ##t
  ragged-last = ##t
  ragged-bottom = ##t
  {_ONE_PAGE.strip()}
  print-page-number = ##f
  oddHeaderMarkup = ##f
  evenHeaderMarkup = ##f
  oddFooterMarkup = ##f
  evenFooterMarkup = ##f
}}
"""
_PREAMBLE_LINES = PREAMBLE.count("\n")
STEM = "score"  # the item's file in its work directory
_PROCESSING = re.compile(r"^Processing `(?:.*/)?score\.ly'", re.MULTILINE)
_ERROR = re.compile(r"^(?:.*/)?score\.ly:(\d+):(\d+): (?:fatal )?error: (.*)$", re.MULTILINE)
_ANY_ERROR = re.compile(r"^\S.*?:\d+:\d+: (?:fatal )?error: (.*)$", re.MULTILINE)
_FAILED = re.compile(r"failed files: (.*)$", re.MULTILINE)


def check_available() -> None:
    """Raise RenderError when ``lilypond`` is missing."""
    require_programs("lilypond", install="install the Debian package lilypond")


def source(markup: str, one_page: bool = True) -> str:
    """The full LilyPond file for ``markup`` (``one_page=False``: LilyPond's own page breaking)."""
    preamble = (
        PREAMBLE if one_page else PREAMBLE.replace(_ONE_PAGE, "% " + _ONE_PAGE.strip() + "\n")
    )
    return preamble + markup + "\n"


def _error(output: str) -> str:
    """The first error line of the score, with its line number counted in the markup itself."""
    match = _ERROR.search(output)
    if match is None:
        return ""
    line, col, message = match.groups()
    line_no = int(line) - _PREAMBLE_LINES
    where = f"line {line_no}:{col}" if line_no > 0 else "preamble"
    return clip(f"{where}: error: {message}")


def _pages(directory: Path) -> list[Path]:
    single = directory / f"{STEM}.png"
    if single.is_file():
        return [single]
    return sorted(directory.glob(f"{STEM}-page*.png"))


def _run(markup: str, ctx: BatchContext, directory: Path, crop: bool) -> Raw | None:
    """Compile ``markup`` alone in ``directory``: its image, its error, or None to crop.

    Without ``crop`` the music goes on one page as tall as it needs; with ``crop``, LilyPond
    breaks pages as it likes and ``-dcrop`` draws the ink of all of them as one image. None
    means: compile again with ``crop`` (music that still spread over pages, or a crash of
    LilyPond's one-page breaking).
    """
    (directory / f"{STEM}.ly").write_text(
        source(markup, one_page=not crop), encoding="utf-8", errors="replace"
    )
    outcome = run_watched(
        [
            "lilypond",
            "--png",
            f"-dresolution={RESOLUTION}",
            "-dno-point-and-click",
            *(["-dcrop"] if crop else []),
            f"{STEM}.ly",
        ],
        cwd=directory,
        workdir=directory,
        timeout=ctx.timeout,
        progress=_PROCESSING,
        startup=STARTUP_SECONDS,
        env=renderer_env(directory),
        cancel=ctx.cancel,
        limits=ctx.limits,
    )
    if outcome.cancelled:
        return Raw(error="cancelled")
    if outcome.limit:  # even when LilyPond went on and wrote an image
        return Raw(error=outcome.limit)
    if outcome.timed_out:
        return Raw(error=timeout_error(ctx.timeout))
    error = _error(outcome.output)
    if error or _FAILED.search(outcome.output):
        # no error line of score.ly: the file may have renamed itself (\sourcefilename)
        return Raw(error=error or _no_image(outcome.output, outcome.returncode))
    pages = _pages(directory)
    cropped = directory / f"{STEM}.cropped.png"
    if crop and cropped.is_file():
        return open_image(cropped, "lilypond output")
    if len(pages) > 1 and not crop:
        return None
    if len(pages) > 1:
        return Raw(error=f"music spans {len(pages)} pages; a markup must fit one page")
    if pages:
        return open_image(pages[0], "lilypond output")
    crashed = outcome.returncode is not None and outcome.returncode > 128
    if crashed and not crop:  # one-page breaking has crashed LilyPond 2.24 (breakbefore)
        return None
    note = crash_note(outcome, ctx.limits)
    return Raw(
        error=clip(" ".join(filter(None, [_no_image(outcome.output, outcome.returncode), note])))
    )


def _no_image(output: str, returncode: int | None) -> str:
    """Why the one file of a run left no image."""
    error = _ANY_ERROR.search(output)  # the file may have renamed itself (\sourcefilename)
    if error:
        return clip(f"error: {error.group(1)}")
    if returncode == 0:
        return "lilypond wrote no image: the input typesets nothing"
    lines = [ln for ln in output.splitlines() if ln.strip()]
    tail = f"; last output: {lines[-1]}" if lines else ""
    how = (
        f"crashed (signal {returncode - 128})"
        if returncode is not None and returncode > 128
        else f"stopped (exit status {returncode})"
    )
    return clip(f"lilypond {how} without an image{tail}")


def render_batch(markups: list[str], ctx: BatchContext) -> list[Raw]:
    """Render each LilyPond source in a process and a work directory of its own."""
    raws = []
    for n, markup in enumerate(markups):
        if ctx.cancel.is_set():
            raws.append(Raw(error="cancelled"))
            continue
        raw = _run(markup, ctx, run_dir(ctx, f"item{n}"), crop=False)
        if raw is None:  # once more, cropped to the ink of all its pages
            raw = _run(markup, ctx, run_dir(ctx, f"item{n}-cropped"), crop=True)
        raws.append(raw or Raw(error="lilypond wrote no image"))
    return raws
