"""LilyPond music: ``lilypond --png``, many files per call.

Each markup is a LilyPond source. A preamble placed before it sets a small staff, a wide short page,
no indent, no headers, footers, page numbers or tagline, so that a short melody lands on one staff
that fits 448 x 192. Settings in the markup itself come later and win.

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
  page-breaking = #ly:one-page-breaking
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


def source(markup: str) -> str:
    """The full LilyPond file for ``markup``."""
    return PREAMBLE + markup + "\n"


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


def _run(markups: list[str], ctx: BatchContext, run_dir: Path) -> tuple[dict[int, Raw], str, int]:
    """Compile ``markups`` in one call.

    Returns the settled items, the run's status and the index of the last file LilyPond started.
    """
    run_dir.mkdir()
    stems = [f"m{n}" for n in range(len(markups))]
    for stem, markup in zip(stems, markups, strict=True):
        (run_dir / f"{stem}.ly").write_text(source(markup), encoding="utf-8", errors="replace")
    outcome = run_watched(
        [
            "lilypond",
            "--png",
            f"-dresolution={RESOLUTION}",
            "-dno-point-and-click",
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
        return {}, "cancelled", last
    if outcome.timed_out:
        return {last: Raw(error=timeout_error(ctx.timeout))}, "timeout", last
    errors = _errors(outcome.output)
    failed_match = _FAILED.search(outcome.output)
    failed = set(re.findall(r"(m\d+)\.ly", failed_match.group(1))) if failed_match else set()
    settled: dict[int, Raw] = {}
    for n, stem in enumerate(stems):
        pages = _pages(run_dir, stem)
        if stem in failed or stem in errors:
            settled[n] = Raw(error=errors.get(stem, "lilypond reported this file as failed"))
        elif len(pages) > 1:
            settled[n] = Raw(error=f"music spans {len(pages)} pages; a markup must fit one page")
        elif pages:
            settled[n] = open_image(pages[0], "lilypond output")
    if len(markups) == 1 and 0 not in settled:
        # the file may have renamed itself (\sourcefilename): any error line is its error
        error = _ANY_ERROR.search(outcome.output)
        if error:
            settled[0] = Raw(error=clip(f"error: {error.group(1)}"))
            return settled, "done", last
        lines = [ln for ln in outcome.output.splitlines() if ln.strip()]
        tail = f"; last output: {lines[-1]}" if lines else ""
        settled[0] = Raw(
            error=clip(
                f"lilypond stopped (exit status {outcome.returncode}) without an image{tail}"
            )
        )
    return settled, "done", last


def render_batch(markups: list[str], ctx: BatchContext) -> list[Raw]:
    """Render each LilyPond source (see the module docstring for failures within a batch)."""
    results: dict[int, Raw] = {}
    pending = collections.deque([list(range(len(markups)))])
    runs = 0
    while pending:
        batch = pending.popleft()
        runs += 1
        settled, status, last = _run([markups[i] for i in batch], ctx, ctx.workdir / f"run{runs}")
        if status == "cancelled":
            for i in batch + [i for b in pending for i in b]:
                results[i] = Raw(error="cancelled")
            break
        for n, raw in settled.items():
            results[batch[n]] = raw
        rest = [n for n in range(len(batch)) if n not in settled]
        if not rest:
            continue
        if status == "timeout":
            pending.append([batch[n] for n in rest])
            continue
        # LilyPond stopped without naming these files (it crashed or exited): the file it was
        # working on is compiled alone, the others together again
        suspect = last if last in rest else rest[0]
        pending.append([batch[suspect]])
        others = [batch[n] for n in rest if n != suspect]
        if others:
            pending.append(others)
    return [results[i] for i in range(len(markups))]
