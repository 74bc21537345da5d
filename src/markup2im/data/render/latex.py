"""LaTeX formulas: ``latex`` then ``dvipng``; formulas of known-safe commands share a document.

Template: ``article`` 12pt, ``\\pagestyle{empty}``, amsmath + amssymb, each formula in its own
``displaymath`` followed by ``\\clearpage``, so formula i is page i + 1. Starting ``latex`` costs
about 0.1 s while a formula costs a few milliseconds, hence the batching.

Formulas of one document share TeX's state, and a list of the commands that can change it
(``\\global``, box dimensions, counters, ``\\thepage``, ``\\the\\inputlineno``, ...) will always
miss one. So the rule is the other way round (``can_share``): a formula shares a document only
when it is made entirely of commands on a known-safe list (``SAFE_COMMANDS``: symbols, letters,
fonts, accents, fractions, roots, delimiters, spacing, the math environments of
``MATH_ENVIRONMENTS``; none of them assigns globally, reads the page or line, or touches a file)
in printable ASCII, with balanced braces and no ``$``, ``#``, ``^^`` or trailing ``\\``. Every
other formula gets a TeX run (and a work directory) of its own, so it renders as it would alone
and no other formula can see what it does.

``latex`` runs with ``-halt-on-error``: at the first bad formula it stops, and every page shipped
before it is a good formula. A marker written before each formula (with the page number it
expects) tells which formula failed and proves that pages and formulas still line up; the
formula that failed is tried again alone (so a batch never does worse than one formula per
document) and the rest of the batch is compiled anew. When the markers do not line up (a formula
that ships two pages or ends the document) every formula of the batch is compiled alone. TeX may
open only files below the run directory and TeX's own trees (kpathsea's ``openin_any=p``,
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
    run_dir,
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
ENDED_EARLY = (
    "the formula ended the document early (\\end{document}, \\stop, \\endinput or the like); "
    "a formula must stay inside its display"
)
_PAGES = re.compile(r"Output written on \S+ \((\d+) pages?")
# kpathsea's settings for both programs: TeX reads and writes only files below its directory and
# in its own trees ("p"aranoid), and runs no shell commands
TEX_ENV = {"openin_any": "p", "openout_any": "p", "shell_escape": "f"}

# The only commands a formula that shares a document may use: each of them draws, or changes
# what it draws inside its own group, and none assigns globally, reads global state that other
# formulas of a document change (page, line, counters, box registers), writes, reads a file or
# talks to the terminal. A formula with any other command is compiled alone.
SAFE_COMMANDS = frozenset(
    """
    alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa varkappa lambda
    mu nu xi pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta
    Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega digamma
    sum prod coprod int iint iiint iiiint oint bigcup bigcap bigsqcup bigvee bigwedge bigodot
    bigotimes bigoplus biguplus intop smallint
    sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh coth log ln lg exp lim liminf
    limsup sup inf max min det dim gcd deg arg ker hom Pr bmod pmod mod pod operatorname
    le leq ge geq neq ne lt gt approx equiv sim simeq cong propto ll gg prec succ preceq succeq
    perp parallel mid nmid in notin ni subset subseteq supset supseteq subsetneq supsetneq
    sqsubset sqsupset sqsubseteq sqsupseteq asymp doteq bowtie models vdash dashv smile frown
    lesssim gtrsim leqslant geqslant nleq ngeq nless ngtr nsim ncong not
    to gets leftarrow rightarrow leftrightarrow Leftarrow Rightarrow Leftrightarrow longleftarrow
    longrightarrow longleftrightarrow Longleftarrow Longrightarrow Longleftrightarrow mapsto
    longmapsto iff implies impliedby uparrow downarrow updownarrow Uparrow Downarrow
    Updownarrow nearrow searrow swarrow nwarrow hookleftarrow hookrightarrow leftharpoonup
    rightharpoonup rightleftharpoons
    pm mp times div cdot cdotp ast star circ bullet oplus ominus otimes oslash odot wedge vee
    land lor cap cup setminus sqcap sqcup uplus amalg wr dagger ddagger triangleleft
    triangleright bigtriangleup bigtriangledown diamond veebar barwedge
    infty partial nabla forall exists nexists emptyset varnothing neg lnot hbar ell wp Re Im
    aleph beth imath jmath prime backslash angle triangle square Box Diamond surd top bot
    flat sharp natural clubsuit diamondsuit heartsuit spadesuit therefore because complement
    ldots cdots vdots ddots dots dotsc dotsb dotsm dotsi
    left right middle big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr Biggl Biggr bigm Bigm
    langle rangle lceil rceil lfloor rfloor lvert rvert lVert rVert vert Vert lbrace rbrace
    lbrack rbrack
    frac dfrac tfrac cfrac binom dbinom tbinom sqrt root of over atop choose stackrel overset
    underset substack
    hat widehat tilde widetilde bar overline underline vec dot ddot dddot ddddot breve check
    acute grave mathring overrightarrow overleftarrow overbrace underbrace
    mathrm mathbf mathit mathsf mathtt mathcal mathbb mathfrak mathnormal boldsymbol text
    textrm textbf textit textsf texttt textnormal mathop mathbin mathrel mathord mathopen
    mathclose mathpunct displaystyle textstyle scriptstyle scriptscriptstyle limits nolimits
    quad qquad enspace thinspace medspace thickspace negthinspace negmedspace negthickspace
    colon hline mathstrut
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
# control symbols that only draw or space: \{ \} \| \, \; \: \! \  \\ \& \% \# \_ \$
SAFE_SYMBOLS = frozenset("{}|,;:! \\&%#_$")
# TeX's tokens as far as sharing cares: control words, control symbols, a comment to the end of
# its line, and runs of other characters
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\\$|%[^\n]*|[^\\%]+", re.DOTALL)
_ENVIRONMENT = re.compile(r"\s*\{([^{}]*)\}")
_PRINTABLE = re.compile(r"[\x20-\x7e\t\n]*")


def check_available() -> None:
    """Raise RenderError when ``latex`` or ``dvipng`` is missing."""
    require_programs(
        "latex",
        "dvipng",
        install="install the Debian packages texlive-latex-base and dvipng",
    )


def can_share(formula: str) -> bool:
    """May ``formula`` share a TeX document with others (only known-safe commands)?

    Errs on the side of no: a formula refused here is only compiled alone (slower, same image).
    """
    if not _PRINTABLE.fullmatch(formula) or "^^" in formula:  # ^^xx spells any character
        return False
    tokens = [t for t in _TOKEN.findall(formula) if not t.startswith("%")]  # comments: dropped
    text = "".join(t for t in tokens if not t.startswith("\\"))
    if "$" in text or "#" in text or "\\" in tokens or not _balanced(text):
        return False  # (a lone "\\" is a backslash at the very end)
    for n, token in enumerate(tokens):
        name = token[1:]
        if name in ("begin", "end"):
            env = _ENVIRONMENT.match("".join(tokens[n + 1 : n + 4]))
            if env is None or env.group(1).strip().rstrip("*") not in MATH_ENVIRONMENTS:
                return False
        elif token.startswith("\\") and name not in SAFE_COMMANDS | SAFE_SYMBOLS:
            return False
    return True


def _balanced(text: str) -> bool:
    """Do the braces of ``text`` (control symbols removed) close in order?"""
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


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


def _compile(formulas: list[str], ctx: BatchContext, directory: Path) -> _Compiled:
    """Run ``latex`` on the document of ``formulas`` in ``directory`` (see the module docstring)."""
    tex = directory / "doc.tex"
    tex.write_text(document(formulas), encoding="utf-8", errors="replace")
    outcome = run_watched(
        ["latex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"],
        cwd=directory,
        workdir=directory,
        timeout=ctx.timeout,
        progress=_PAGE_DONE,
        items=len(formulas),
        startup=STARTUP_SECONDS,
        env=renderer_env(directory, TEX_ENV),
        cancel=ctx.cancel,
        limits=ctx.limits,
    )
    if outcome.cancelled:
        return _Compiled("cancelled", 0)
    if outcome.limit:
        return _Compiled("mismatch", 0, outcome.limit)
    if outcome.timed_out:  # the DVI is unfinished; formula number `progress` was running
        return _Compiled("timeout", min(outcome.progress, len(formulas) - 1))
    log_path = directory / "doc.log"
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
        if marks and marks[-1][0] != "end":  # it stopped before the end of the document
            return _Compiled("mismatch", 0, ENDED_EARLY)
        return _Compiled("mismatch", 0, f"formula produced {pages} pages, expected 1")
    last_line = (outcome.output.strip().splitlines() or [""])[-1]
    error = _first_error(log) or clip(last_line or f"latex exited with status {outcome.returncode}")
    failed = len(marks) - 1  # the formula whose marker came last
    if in_step and 0 <= failed < len(formulas) and pages == failed:
        return _Compiled("error", failed, error)
    return _Compiled("mismatch", 0, error)


def _rasterize(count: int, ctx: BatchContext, directory: Path) -> list[Raw]:
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
        cwd=directory,
        workdir=directory,
        timeout=ctx.timeout + 0.05 * count,
        env=renderer_env(directory, TEX_ENV),
        cancel=ctx.cancel,
        limits=ctx.limits,
    )
    message = clip(next((ln for ln in outcome.output.splitlines() if ln.strip()), ""))
    raws = []
    for page in range(1, count + 1):
        png = directory / f"page{page}.png"
        if png.is_file():
            raws.append(open_image(png, "dvipng output"))
            continue
        if outcome.timed_out:
            message = timeout_error(ctx.timeout)
        if outcome.limit:
            message = outcome.limit
        raws.append(Raw(error=f"dvipng: {message or 'no image written'}"))
    return raws


def render_batch(formulas: list[str], ctx: BatchContext) -> list[Raw]:
    """Render each formula (see the module docstring for how a batch is split on failure)."""
    results: dict[int, Raw] = {}
    shared = [i for i, formula in enumerate(formulas) if can_share(formula)]
    alone = [i for i in range(len(formulas)) if i not in set(shared)]
    pending = collections.deque(([shared] if shared else []) + [[i] for i in alone])
    runs = 0
    while pending:
        batch = pending.popleft()
        runs += 1
        # a run of its own for each formula that cannot share: no other formula sees its files
        directory = run_dir(ctx, f"run{runs}" if len(batch) > 1 else f"run{runs}-item{batch[0]}")
        compiled = _compile([formulas[i] for i in batch], ctx, directory)
        if compiled.status == "cancelled":
            for i in batch + [i for b in pending for i in b]:
                results[i] = Raw(error="cancelled")
            break
        for i, raw in zip(
            batch[: compiled.good], _rasterize(compiled.good, ctx, directory), strict=True
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
