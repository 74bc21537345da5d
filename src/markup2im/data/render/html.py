"""HTML (tables): ``wkhtmltoimage``, one call per item in a work directory of its own, the font
pinned in CSS.

The markup is placed in a page whose style sheet fixes the font (DejaVu Sans, from Debian's
fonts-dejavu-core), its size, black text and white margins, so that the image depends on the
markup only and not on the machine's default fonts. A complete document (with ``<html>``) gets the
same style sheet first, and its own styles still apply after it. JavaScript is off: pages are
static and cannot loop. Remote images and style sheets are never fetched: the renderer's sandbox
has no network (``file://`` is refused by wkhtmltoimage itself), and a relative link reaches
nothing but the item's own page: each item runs in a directory of its own, the only one its
sandbox shows.
"""

from __future__ import annotations

import re

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

BATCH_SIZE = 16  # items handed to one worker at a time (each is still its own process)
FONT_SIZE_PX = 8  # small tables must fit 64 x 64
VIEWPORT_WIDTH = 512  # wider pages grow by themselves; the image is cropped to ink anyway

STYLE = f"""<style>
html, body {{ margin: 0; padding: 0; background: #ffffff; }}
body {{ font-family: "DejaVu Sans"; font-size: {FONT_SIZE_PX}px; line-height: 1.15; color: #000000;
       padding: 1px; }}
table {{ font-size: inherit; }}
td, th {{ padding: 1px 2px; }}
</style>"""


def check_available() -> None:
    """Raise RenderError when ``wkhtmltoimage`` is missing."""
    require_programs(
        "wkhtmltoimage",
        install="install the Debian packages wkhtmltopdf and fonts-dejavu-core",
    )


def page(markup: str) -> str:
    """The HTML page that renders ``markup``."""
    if re.search(r"<html[\s>]", markup, flags=re.IGNORECASE):
        return STYLE + "\n" + markup
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"{STYLE}</head><body>\n{markup}\n</body></html>\n"
    )


def _error(output: str, returncode: int | None) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("QStandardPaths")]
    interesting = [ln for ln in lines if re.search(r"error|fail|exit", ln, re.IGNORECASE)]
    return clip((interesting or lines or [f"wkhtmltoimage exited with status {returncode}"])[0])


def render_batch(markups: list[str], ctx: BatchContext) -> list[Raw]:
    """Render each HTML markup with its own ``wkhtmltoimage`` call."""
    raws = []
    for n, markup in enumerate(markups):
        if ctx.cancel.is_set():
            raws.append(Raw(error="cancelled"))
            continue
        directory = run_dir(ctx, f"item{n}")
        source = directory / "page.html"
        target = directory / "page.png"
        source.write_text(page(markup), encoding="utf-8", errors="replace")
        outcome = run_watched(
            [
                "wkhtmltoimage",
                "--quiet",
                "--format",
                "png",
                "--width",
                str(VIEWPORT_WIDTH),
                "--disable-javascript",
                "--javascript-delay",  # its default waits 200 ms per page for scripts we never run
                "0",
                "--encoding",
                "utf-8",
                source.name,
                target.name,
            ],
            cwd=directory,
            workdir=directory,
            timeout=ctx.timeout,
            env=renderer_env(directory),
            cancel=ctx.cancel,
            limits=ctx.limits,
        )
        if outcome.limit:
            raws.append(Raw(error=outcome.limit))
        elif outcome.timed_out:
            raws.append(Raw(error=timeout_error(ctx.timeout)))
        elif outcome.cancelled:
            raws.append(Raw(error="cancelled"))
        elif outcome.returncode != 0 or not target.is_file():
            note = crash_note(outcome, ctx.limits)
            error = _error(outcome.output, outcome.returncode)
            raws.append(Raw(error=clip(f"{error} {note}".strip())))
        else:
            raws.append(open_image(target, "wkhtmltoimage output"))
    return raws
