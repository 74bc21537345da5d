"""LilyPond music: ``lilypond --png``, many files per call.

Each markup is a LilyPond source. A preamble placed before it sets a small staff, a wide short page,
no indent, no headers, footers, page numbers or tagline, so that a short melody lands on one staff
that fits 448 x 192. A longer score goes on one page as tall as its music
(``ly:one-page-breaking``, which also ignores ``\\pageBreak``), and is cropped and fitted like any
rendering. Settings in the markup itself come later and win; a score that they still spread over
several pages (its own page breaking, book parts), or that crashes LilyPond's one-page breaking,
is compiled again with LilyPond's own page breaking and ``-dcrop``, which draws the ink of all
its pages as one image.

One ``lilypond`` call takes many files (starting LilyPond costs about 2 s, a file about 0.35 s).
LilyPond names the files it could not compile ("failed files: ...") and prints ``file:line:col:
error: ...`` for each, so a bad file is identified without re-running the batch. When LilyPond
stops early without naming the file (a crash, or a file that makes it exit), the file it was
working on (its last "Processing" line) is compiled alone and the unfinished rest together again;
a file that makes LilyPond hang is identified the same way, recorded, and the rest compiled anew.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from markup2im.data.render.base import (
    BatchContext,
    Raw,
    clip,
    open_image,
    require_programs,
    timeout_error,
)
from markup2im.data.render.process import renderer_env, run_watched

BATCH_SIZE = 24
RESOLUTION = 110  # dpi of the PNG
STAFF_SIZE = 16  # points; LilyPond's default is 20
# LilyPond needs ~2.5 s of CPU to start; its "Processing `x.ly'" line marks when an item begins,
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
_PROCESSING = re.compile(r"^Processing `(?:.*/)?(m\d+)\.ly'", re.MULTILINE)
_ERROR = re.compile(r"^(?:.*/)?(m\d+)\.ly:(\d+):(\d+): (?:fatal )?error: (.*)$", re.MULTILINE)
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


def _errors(output: str) -> dict[str, str]:
    """First error line of each file, with line numbers counted in the markup itself."""
    found: dict[str, str] = {}
    for match in _ERROR.finditer(output):
        stem, line, col, message = match.groups()
        line_no = int(line) - _PREAMBLE_LINES
        where = f"line {line_no}:{col}" if line_no > 0 else "preamble"
        found.setdefault(stem, clip(f"{where}: error: {message}"))
    return found


def _pages(run_dir: Path, stem: str) -> list[Path]:
    single = run_dir / f"{stem}.png"
    if single.is_file():
        return [single]
    return sorted(run_dir.glob(f"{stem}-page*.png"))


def _run(
    markups: list[str], ctx: BatchContext, run_dir: Path, crop: bool
) -> tuple[dict[int, Raw], list[int], str, int]:
    """Compile ``markups`` in one call.

    Without ``crop`` the music goes on one page as tall as it needs; with ``crop``, LilyPond
    breaks pages as it likes and ``-dcrop`` draws the ink of all of them as one image. Returns
    the settled items, those to compile again with ``crop`` (music that still spread over pages,
    or a file that crashed LilyPond alone), the run's status and the index of the last file
    LilyPond started.
    """
    run_dir.mkdir()
    stems = [f"m{n}" for n in range(len(markups))]
    for stem, markup in zip(stems, markups, strict=True):
        text = source(markup, one_page=not crop)
        (run_dir / f"{stem}.ly").write_text(text, encoding="utf-8", errors="replace")
    outcome = run_watched(
        [
            "lilypond",
            "--png",
            f"-dresolution={RESOLUTION}",
            "-dno-point-and-click",
            *(["-dcrop"] if crop else []),
            *[f"{s}.ly" for s in stems],
        ],
        cwd=run_dir,
        workdir=ctx.workdir,
        timeout=ctx.timeout,
        progress=_PROCESSING,
        items=len(markups),
        startup=STARTUP_SECONDS,
        env=renderer_env(ctx.workdir),
        cancel=ctx.cancel,
    )
    started = _PROCESSING.findall(outcome.output)
    last = stems.index(started[-1]) if started else 0
    if outcome.cancelled:
        return {}, [], "cancelled", last
    if outcome.timed_out:
        return {last: Raw(error=timeout_error(ctx.timeout))}, [], "timeout", last
    errors = _errors(outcome.output)
    failed_match = _FAILED.search(outcome.output)
    failed = set(re.findall(r"(m\d+)\.ly", failed_match.group(1))) if failed_match else set()
    settled: dict[int, Raw] = {}
    spread: list[int] = []
    for n, stem in enumerate(stems):
        pages = _pages(run_dir, stem)
        cropped = run_dir / f"{stem}.cropped.png"
        if stem in failed or stem in errors:
            settled[n] = Raw(error=errors.get(stem, "lilypond reported this file as failed"))
        elif crop and cropped.is_file():
            settled[n] = open_image(cropped, "lilypond output")
        elif len(pages) > 1 and not crop:
            spread.append(n)
        elif len(pages) > 1:
            settled[n] = Raw(error=f"music spans {len(pages)} pages; a markup must fit one page")
        elif pages:
            settled[n] = open_image(pages[0], "lilypond output")
    if len(markups) == 1 and not settled and not spread:
        crashed = outcome.returncode is not None and outcome.returncode > 128
        if crashed and not crop:  # one-page breaking has crashed LilyPond 2.24 (breakbefore)
            spread.append(0)
        else:
            settled[0] = Raw(error=_no_image(outcome.output, outcome.returncode))
    return settled, spread, "done", last


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
    """Render each LilyPond source (see the module docstring for failures within a batch)."""
    results: dict[int, Raw] = {}
    pending = collections.deque([(list(range(len(markups))), False)])
    runs = 0
    while pending:
        batch, crop = pending.popleft()
        runs += 1
        settled, spread, status, last = _run(
            [markups[i] for i in batch], ctx, ctx.workdir / f"run{runs}", crop
        )
        if status == "cancelled":
            for i in batch + [i for b, _ in pending for i in b]:
                results[i] = Raw(error="cancelled")
            break
        for n, raw in settled.items():
            results[batch[n]] = raw
        if spread:  # once more, cropped to the ink of all its pages
            pending.append(([batch[n] for n in spread], True))
        rest = [n for n in range(len(batch)) if n not in settled and n not in spread]
        if not rest:
            continue
        if status == "timeout":
            pending.append(([batch[n] for n in rest], crop))
            continue
        # LilyPond stopped without naming these files (it crashed or exited): the file it was
        # working on is compiled alone, the others together again
        suspect = last if last in rest else rest[0]
        pending.append(([batch[suspect]], crop))
        others = [batch[n] for n in rest if n != suspect]
        if others:
            pending.append((others, crop))
    return [results[i] for i in range(len(markups))]
