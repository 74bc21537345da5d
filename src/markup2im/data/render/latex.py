"""LaTeX formulas: ``latex`` then ``dvipng``, many formulas per document.

Template: ``article`` 12pt, ``\\pagestyle{empty}``, amsmath + amssymb, each formula in its own
``displaymath`` followed by ``\\clearpage``, so formula i is page i + 1. Starting ``latex`` costs
about 0.1 s while a formula costs a few milliseconds, hence the batching.

``latex`` runs with ``-halt-on-error``: at the first bad formula it stops, and every page shipped
before it is a good formula. A marker written before each formula (with the page number it expects)
tells which formula failed and proves that pages and formulas still line up; the formula that
failed is tried again alone (so a batch never does worse than one formula per document) and the
rest of the batch is compiled anew. When the markers do not line up (a formula that ships two pages
or ends the document) every formula of the batch is compiled alone.

Formulas of one document share TeX's state, so a formula that could change it for the ones after
it (``\\global\\let\\alpha\\beta``, ``\\gdef``, a counter, a catcode, a dvipng special, leaving
its display, ...) would change how they render. Such a formula is compiled in a document of its
own (``needs_own_document``: a list of the TeX and LaTeX commands that can do so, and anything
that could spell one in disguise), so every formula renders as it would alone. TeX may open only
files below the run directory and TeX's own trees (kpathsea's ``openin_any=p``,
``openout_any=p``: no absolute paths, no ``..``, no dot files), on top of the sandbox.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
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

BATCH_SIZE = 64
DPI = 100  # dvipng resolution: a typical formula fits 320 x 64 without shrinking
STARTUP_SECONDS = 5.0  # allowance for loading the packages, on top of the first formula's timeout

PREAMBLE = r"""\documentclass[12pt]{article}
\usepackage{amsmath}
\usepackage{amssymb}
\pagestyle{empty}
\nofiles
\begin{document}
"""
_MARK = re.compile(r"<<m2i:(\d+|end):(\d+)>>")
_PAGE_DONE = re.compile(r"\[\d+\]")
_PAGES = re.compile(r"Output written on \S+ \((\d+) pages?")
# kpathsea's settings for both programs: TeX reads and writes only files below its directory and
# in its own trees ("p"aranoid), and runs no shell commands
TEX_ENV = {"openin_any": "p", "openout_any": "p", "shell_escape": "f"}

# Commands after which the next formula of the same document might not render as it would alone:
# global assignments and parameters that are always global, LaTeX commands that assign globally
# (counters, tags, page styles), definitions, groups and displays a formula could close early,
# catcodes and constructed names (which could spell any of these), files, terminal output
# (the markers below are read from it) and specials (dvipng keeps colours across pages).
STATEFUL_COMMANDS = frozenset(
    """
    global globaldefs gdef xdef def edef let futurelet long outer protected csname
    fontdimen hyphenchar skewchar hyphenation patterns batchmode nonstopmode scrollmode
    errorstopmode interactionmode deadcycles insertpenalties pagegoal pagetotal pagestretch
    pagefilstretch pagefillstretch pagefilllstretch pageshrink pagedepth prevgraf spacefactor
    prevdepth setbox shipout output mark marks everypar everymath everydisplay everyhbox
    everyvbox everyjob everycr everyeof aftergroup afterassignment begingroup endgroup bgroup
    egroup catcode lccode uccode sfcode mathcode delcode endlinechar newlinechar escapechar
    makeatletter makeatother ExplSyntaxOn ExplSyntaxOff scantokens input include endinput
    InputIfFileExists IfFileExists openin openout closein closeout read readline write
    immediate message typeout wlog errmessage special setcounter addtocounter stepcounter
    refstepcounter newcounter setlength addtolength newlength newtheorem newcommand
    renewcommand providecommand newenvironment renewenvironment DeclareRobustCommand
    DeclareMathOperator pagenumbering thispagestyle pagestyle markboth markright tag notag
    nonumber label displaybreak allowdisplaybreaks enddocument document dump stop
    """.split()
)
# \begin{...} runs the command of the environment's name: only these math environments share a
# document (\end is checked the same way)
MATH_ENVIRONMENTS = frozenset(
    """
    array matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix cases aligned alignedat
    gathered split subarray
    """.split()
)
_DISPLAY_SYMBOLS = frozenset("[]()")  # \[ \] \( \) open and close math
_CONTROL = re.compile(r"\\([A-Za-z]+|.)", re.DOTALL)
_ENVIRONMENT = re.compile(r"\s*\{([^{}]*)\}")


def check_available() -> None:
    """Raise RenderError when ``latex`` or ``dvipng`` is missing."""
    require_programs(
        "latex",
        "dvipng",
        install="install the Debian packages texlive-latex-base and dvipng",
    )


def needs_own_document(formula: str) -> bool:
    """Could ``formula`` change how a later formula of the same document renders?

    Errs on the side of yes: a formula flagged here is only compiled alone (slower, same image).
    """
    if "^^" in formula:  # ^^xx spells any character, and so any command name
        return True
    for match in _CONTROL.finditer(formula):
        name = match.group(1)
        if name in ("begin", "end"):
            env = _ENVIRONMENT.match(formula, match.end())
            if env is None or env.group(1).strip().rstrip("*") not in MATH_ENVIRONMENTS:
                return True
        elif name in STATEFUL_COMMANDS or name in _DISPLAY_SYMBOLS:
            return True
    return False


def document(formulas: list[str]) -> str:
    """The LaTeX source with one formula per page."""
    parts = [PREAMBLE]
    for i, formula in enumerate(formulas):
        # The formula sits on lines of its own so that a "%" in it cannot comment out the
        # end of the display.
        parts.append(
            f"\\typeout{{<<m2i:{i}:\\thepage>>}}\n\\begin{{displaymath}}\n{formula}\n"
            "\\end{displaymath}\n\\clearpage\n"
        )
    parts.append("\\typeout{<<m2i:end:\\thepage>>}\n\\end{document}\n")
    return "".join(parts)


@dataclass
class _Compiled:
    status: str  # ok | error | timeout | mismatch | cancelled
    good: int  # formulas from the start whose pages are in the DVI
    error: str = ""


def _first_error(log: str) -> str:
    """The first TeX error line, with the input it stopped at."""
    lines = log.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("! "):
            context = next((c for c in lines[n + 1 : n + 12] if re.match(r"l\.\d+ ", c)), "")
            where = re.sub(r"^l\.\d+ ", "", context).strip()
            return clip(f"{line[2:].strip()}" + (f" (at: {where})" if where else ""))
    return ""


def _compile(formulas: list[str], ctx: BatchContext, run_dir: Path) -> _Compiled:
    run_dir.mkdir()
    tex = run_dir / "doc.tex"
    tex.write_text(document(formulas), encoding="utf-8", errors="replace")
    outcome = run_watched(
        ["latex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"],
        cwd=run_dir,
        workdir=ctx.workdir,
        timeout=ctx.timeout,
        progress=_PAGE_DONE,
        items=len(formulas),
        startup=STARTUP_SECONDS,
        env=renderer_env(ctx.workdir, TEX_ENV),
        cancel=ctx.cancel,
    )
    if outcome.cancelled:
        return _Compiled("cancelled", 0)
    if outcome.timed_out:  # the DVI is unfinished; formula number `progress` was running
        return _Compiled("timeout", min(outcome.progress, len(formulas) - 1))
    log_path = run_dir / "doc.log"
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    match = _PAGES.search(outcome.output)
    pages = int(match.group(1)) if match else 0
    marks = [(m.group(1), int(m.group(2))) for m in _MARK.finditer(log)]
    in_step = all(page == n + 1 for n, (_, page) in enumerate(marks[: len(formulas)]))
    in_step = in_step and all(str(n) == idx for n, (idx, _) in enumerate(marks[: len(formulas)]))
    if outcome.returncode == 0:
        complete = len(marks) == len(formulas) + 1 and marks[-1] == ("end", len(formulas) + 1)
        if in_step and complete and pages == len(formulas):
            return _Compiled("ok", pages)
        return _Compiled("mismatch", 0, f"formula produced {pages} pages, expected 1")
    last_line = (outcome.output.strip().splitlines() or [""])[-1]
    error = _first_error(log) or clip(last_line or f"latex exited with status {outcome.returncode}")
    failed = len(marks) - 1  # the formula whose marker came last
    if in_step and 0 <= failed < len(formulas) and pages == failed:
        return _Compiled("error", failed, error)
    return _Compiled("mismatch", 0, error)


def _rasterize(count: int, ctx: BatchContext, run_dir: Path) -> list[Raw]:
    """Pages 1..count of the DVI as images (an error per page that dvipng could not draw)."""
    if count == 0:
        return []
    outcome = run_watched(
        [
            "dvipng",
            "-q",
            "-D",
            str(DPI),
            "-T",
            "tight",
            "-bg",
            "rgb 1.0 1.0 1.0",
            "-fg",
            "rgb 0.0 0.0 0.0",
            "-l",
            str(count),
            "-o",
            "page%d.png",
            "doc.dvi",
        ],
        cwd=run_dir,
        workdir=ctx.workdir,
        timeout=ctx.timeout + 0.05 * count,
        env=renderer_env(ctx.workdir, TEX_ENV),
        cancel=ctx.cancel,
    )
    message = clip(next((ln for ln in outcome.output.splitlines() if ln.strip()), ""))
    raws = []
    for page in range(1, count + 1):
        png = run_dir / f"page{page}.png"
        if png.is_file():
            raws.append(open_image(png, "dvipng output"))
            continue
        if outcome.timed_out:
            message = timeout_error(ctx.timeout)
        raws.append(Raw(error=f"dvipng: {message or 'no image written'}"))
    return raws


def render_batch(formulas: list[str], ctx: BatchContext) -> list[Raw]:
    """Render each formula (see the module docstring for how a batch is split on failure)."""
    results: dict[int, Raw] = {}
    alone = [i for i, formula in enumerate(formulas) if needs_own_document(formula)]
    shared = [i for i in range(len(formulas)) if i not in set(alone)]
    pending = collections.deque(([shared] if shared else []) + [[i] for i in alone])
    runs = 0
    while pending:
        batch = pending.popleft()
        runs += 1
        run_dir = ctx.workdir / f"run{runs}"
        compiled = _compile([formulas[i] for i in batch], ctx, run_dir)
        if compiled.status == "cancelled":
            for i in batch + [i for b in pending for i in b]:
                results[i] = Raw(error="cancelled")
            break
        for i, raw in zip(
            batch[: compiled.good], _rasterize(compiled.good, ctx, run_dir), strict=True
        ):
            results[i] = raw
        k = compiled.good
        if compiled.status == "timeout":
            results[batch[k]] = Raw(error=timeout_error(ctx.timeout))
            if len(batch) > 1:
                pending.append(batch[:k] + batch[k + 1 :])
        elif compiled.status == "error":
            if len(batch) == 1:
                results[batch[0]] = Raw(error=compiled.error)
            else:
                pending.append([batch[k]])
                if batch[k + 1 :]:
                    pending.append(batch[k + 1 :])
        elif compiled.status == "mismatch":
            if len(batch) == 1:
                results[batch[0]] = Raw(error=compiled.error)
            else:
                pending.extend([i] for i in batch)
    return [results[i] for i in range(len(formulas))]
