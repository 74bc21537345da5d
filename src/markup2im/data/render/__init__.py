"""Rendering markup to images with the real renderers, many items in parallel.

One renderer module per domain (``latex``, ``html``, ``lilypond``, ``smiles``) turns a batch of
markups into raw images; this module spreads batches over worker threads (each batch is one or a
few renderer processes, so threads suffice), fits every image onto the domain's canvas
(``canvas.fit_to_canvas``), and records every item: a failed item keeps the renderer's own
first error line, a hanging renderer is killed after the per-item timeout, a rendering too small
to read once fitted fails, and the rest goes on. Every renderer process runs in a sandbox
(``process.py``); rendering refuses to start where the sandbox cannot run, and SIGTERM or SIGINT
kill every renderer before this process stops.

Identical markups are rendered once. File names are a hash of the markup (10 hex digits, like
the hub's ``433d71b530.png``); a repeated markup or a hash collision gets a name derived from the
markup and its occurrence number, so no row ever shares a file with another.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import importlib
import io
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from markup2im.atomic import atomic_path, write_text
from markup2im.data.markup_files import replaced_note, writable
from markup2im.data.render.base import BatchContext
from markup2im.data.render.canvas import BlankImageError, TooSmallError, fit_to_canvas, png_bytes
from markup2im.data.render.process import Limits, check_sandbox, stop_on_signal
from markup2im.errors import RenderError
from markup2im.names import MAX_CANVAS_SIDE
from markup2im.presets import DomainSpec, get_domain

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds per item
MANIFEST = "manifest.csv"
LOGGED_FAILURES = 20  # failed rows named in the log; the manifest has them all
MANIFEST_COLUMNS = ("index", "filename", "ok", "error", "markup", "shrunk", "line")

# DomainSpec.renderer -> module of this package
RENDERERS: dict[str, str] = {
    "latex": "latex",
    "html": "html",
    "lilypond": "lilypond",
    "smiles": "smiles",
}


@dataclass
class RenderedItem:
    """The outcome of one input row."""

    index: int
    markup: str
    filename: str
    ok: bool
    error: str = ""
    shrunk: bool = False
    png: bytes | None = None  # the fitted image, PNG-encoded (None when not ok)


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def renderer_module(spec: DomainSpec) -> ModuleType:
    """The renderer module of a domain."""
    return importlib.import_module(f"{__name__}.{RENDERERS[spec.renderer]}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:10]


def assign_filenames(markups: Sequence[str]) -> list[str]:
    """Stable, distinct ``<10 hex>.png`` names: the hash of the markup, or of markup + occurrence."""
    taken: set[str] = set()
    names = []
    for markup in markups:
        name = _digest(markup)
        occurrence = 0
        while name in taken:
            occurrence += 1
            name = _digest(f"{markup}\x00{occurrence}")
        taken.add(name)
        names.append(f"{name}.png")
    return names


def _chunks(items: list[int], workers: int, batch_size: int) -> list[list[int]]:
    size = max(1, min(batch_size, math.ceil(len(items) / max(1, workers))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _render_chunk(
    module: ModuleType,
    markups: list[str],
    spec: DomainSpec,
    width: int,
    height: int,
    timeout: float,
    cancel: threading.Event,
    limits: Limits,
) -> list[tuple[bool, str, bool, bytes | None]]:
    """Render one batch and fit each image: (ok, error, shrunk, png) per markup."""
    try:
        with tempfile.TemporaryDirectory(prefix="markup2im-render-") as tmp:
            raws = module.render_batch(
                markups, BatchContext(Path(tmp), timeout, width, height, cancel, limits)
            )
    except Exception as exc:  # an unexpected failure spoils this batch only
        logger.exception("renderer %s failed on a batch of %d", spec.renderer, len(markups))
        return [(False, f"renderer failed: {exc}", False, None)] * len(markups)
    out: list[tuple[bool, str, bool, bytes | None]] = []
    for raw in raws:
        if raw.image is None:
            out.append((False, raw.error or "no image", False, None))
            continue
        try:
            fitted = fit_to_canvas(raw.image, width, height, spec.color_mode)
        except (BlankImageError, TooSmallError) as exc:
            out.append((False, str(exc), False, None))
        except (OSError, ValueError, MemoryError) as exc:  # e.g. an absurdly large rendering
            out.append((False, f"cannot fit the rendered image: {exc}", False, None))
        else:
            out.append((True, "", fitted.shrunk, png_bytes(fitted.image)))
    return out


def iter_render(
    domain: str | DomainSpec,
    markups: Sequence[str],
    *,
    width: int | None = None,
    height: int | None = None,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    skip: Mapping[int, str] | None = None,
    filenames: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    limits: Limits | None = None,
) -> Iterator[RenderedItem]:
    """Render ``markups`` in parallel, yielding each row's outcome as its batch finishes.

    ``skip`` maps row indices to an error already known (for instance an unreadable line): those
    rows are not rendered and are reported as failed with that error. ``batch_size`` overrides
    the renderer's number of items per worker (1 = one process per item). ``limits`` bounds the
    memory and disk of each renderer process (default ``Limits()``).
    """
    from tqdm.auto import tqdm

    spec = domain if isinstance(domain, DomainSpec) else get_domain(domain)
    width, height = width or spec.width, height or spec.height
    if not (0 < width <= MAX_CANVAS_SIDE and 0 < height <= MAX_CANVAS_SIDE):
        raise RenderError(
            f"canvas size must be 1..{MAX_CANVAS_SIDE} pixels a side, got {width}x{height}"
        )
    limits = limits or Limits()
    if timeout <= 0:
        raise RenderError(f"timeout must be positive, got {timeout}")
    workers = workers or default_workers()
    module = renderer_module(spec)
    module.check_available()
    check_sandbox()
    skip = dict(skip or {})
    names = list(filenames) if filenames is not None else assign_filenames(markups)

    first_row: dict[str, int] = {}
    same: dict[int, list[int]] = {}
    for index, markup in enumerate(markups):
        if index in skip:
            yield RenderedItem(index, markup, names[index], False, skip[index])
            continue
        leader = first_row.setdefault(markup, index)
        same.setdefault(leader, []).append(index)
    leaders = list(same)
    chunks = _chunks(leaders, workers, batch_size or module.BATCH_SIZE)
    cancel = threading.Event()
    bar = tqdm(
        total=len(leaders),
        desc=f"render {spec.name}",
        unit="item",
        file=sys.stderr,
        disable=not progress or not leaders,
        dynamic_ncols=True,
    )
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render")
    try:
        # SIGTERM / SIGINT kill every renderer before this process stops (see process.py)
        with stop_on_signal(cancel):
            futures = {
                pool.submit(
                    _render_chunk,
                    module,
                    [markups[i] for i in chunk],
                    spec,
                    width,
                    height,
                    timeout,
                    cancel,
                    limits,
                ): chunk
                for chunk in chunks
            }
            for future in concurrent.futures.as_completed(futures):
                chunk = futures[future]
                for leader, (ok, error, shrunk, png) in zip(chunk, future.result(), strict=True):
                    for index in same[leader]:
                        yield RenderedItem(
                            index, markups[index], names[index], ok, error, shrunk, png
                        )
                bar.update(len(chunk))
    finally:
        cancel.set()  # stops renderers still running when the caller stops early
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def render_markups(
    domain: str | DomainSpec, markups: Sequence[str], **kwargs
) -> list[RenderedItem]:
    """Render ``markups`` (see ``iter_render``); the outcomes in input order."""
    items = list(iter_render(domain, markups, **kwargs))
    return sorted(items, key=lambda item: item.index)


@dataclass(frozen=True)
class RenderSummary:
    """Counts of one ``render`` run."""

    total: int
    rendered: int
    failed: int
    shrunk: int
    blank_lines: int
    manifest: Path

    def describe(self) -> str:
        """One line for the log and the terminal."""
        return (
            f"rendered {self.rendered} of {self.total} (failed {self.failed}, shrunk to fit "
            f"{self.shrunk}, blank lines skipped {self.blank_lines}); manifest: {self.manifest}"
        )


def manifest_csv(rows: Sequence[RenderedItem], lines: Sequence[int] | None = None) -> str:
    """The manifest table (one row per input, in input order) as CSV text.

    Text a manifest cannot hold (a lone surrogate, NUL) is shown as U+FFFD and the row's error
    says so, so that one row never stops the manifest of the others."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for item in sorted(rows, key=lambda r: r.index):
        line = lines[item.index] if lines is not None else ""
        markup, in_markup = writable(item.markup)
        error, in_error = writable(item.error)
        if in_markup + in_error:
            error = "; ".join(filter(None, [error, replaced_note(in_markup + in_error)]))
        writer.writerow(
            [
                item.index,
                item.filename,
                "true" if item.ok else "false",
                error,
                markup,
                "true" if item.shrunk else "false",
                line,
            ]
        )
    return buffer.getvalue()


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a ``manifest.csv`` as dictionaries of strings; markup of any length."""
    # csv refuses fields over 128 KB by default; no field is longer than the file
    csv.field_size_limit(max(csv.field_size_limit(), os.path.getsize(path) + 1))
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def render_markup_file(
    domain: str,
    markup_file: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    width: int | None = None,
    height: int | None = None,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    limits: Limits | None = None,
) -> RenderSummary:
    """Render every markup of a ``.txt`` / ``.jsonl`` file into ``output_dir``.

    Writes ``<filename>.png`` for each rendered row and ``manifest.csv`` for all rows (written
    last, so a manifest means a finished run). Raises RenderError when nothing rendered.
    """
    from markup2im.data.markup_files import read_markup_file

    spec = get_domain(domain)
    source = read_markup_file(markup_file)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in iter_render(
        spec,
        source.markups,
        width=width,
        height=height,
        workers=workers,
        timeout=timeout,
        skip=source.errors,
        progress=progress,
        limits=limits,
    ):
        if item.ok and item.png is not None:
            with atomic_path(out / item.filename) as tmp:
                tmp.write_bytes(item.png)
            item.png = None
        rows.append(item)
    manifest = out / MANIFEST
    write_text(manifest, manifest_csv(rows, source.lines))
    rendered = sum(r.ok for r in rows)
    summary = RenderSummary(
        total=len(rows),
        rendered=rendered,
        failed=len(rows) - rendered,
        shrunk=sum(r.shrunk for r in rows),
        blank_lines=len(source.blank_lines),
        manifest=manifest,
    )
    logger.info("%s", summary.describe())
    failed = [r for r in sorted(rows, key=lambda r: r.index) if not r.ok]
    for item in failed[:LOGGED_FAILURES]:
        logger.warning(
            "row %d (line %d) failed: %s", item.index, source.lines[item.index], item.error
        )
    if len(failed) > LOGGED_FAILURES:
        logger.warning(
            "... and %d more failed rows (see %s)", len(failed) - LOGGED_FAILURES, manifest
        )
    if rendered == 0:
        first = next((r.error for r in sorted(rows, key=lambda r: r.index)), "no input")
        raise RenderError(
            f"{markup_file}: no markup rendered ({len(rows)} failed; first error: {first}); "
            f"see {manifest}"
        )
    return summary
