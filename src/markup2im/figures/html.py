"""Self-contained HTML pages: a table of cells, or an image or CSV file wrapped for
``snakemake --report`` (which shows HTML files inline)."""

from __future__ import annotations

import base64
import csv
import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markup2im.atomic import write_text
from markup2im.errors import DataError

log = logging.getLogger(__name__)

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}"
    "table{border-collapse:collapse}"
    "th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}"
    "th{background:#eee}"
    "img{max-width:100%;image-rendering:pixelated}"
)

_MIME = {
    ".gif": "image/gif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}


def _html_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table of ``header`` and ``rows``, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _html_page(title: str, body: str) -> str:
    """A whole page: ``title`` (escaped) as its title and heading, then ``body`` as it is."""
    escaped = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escaped}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escaped}</h1>\n{body}\n</body>\n</html>\n"
    )


def table_page(title: str, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A self-contained HTML page holding one table (cells escaped)."""
    return _html_page(title, _html_table(header, rows))


def _image_body(source: Path, suffix: str) -> str:
    """An ``<img>`` holding the file's bytes as base64, so the page needs nothing beside it."""
    data = base64.b64encode(source.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(source.name)}" src="data:{_MIME[suffix]};base64,{data}">'


def _csv_body(source: Path) -> str:
    """The CSV file as an HTML table (first row as header); DataError naming the file."""
    try:
        with open(source, newline="", encoding="utf-8") as handle:
            records = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{source}: cannot read CSV ({exc})") from exc
    if not records:
        raise DataError(f"{source}: empty CSV")
    return _html_table(records[0], records[1:])


def html_page(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    title: str | None = None,
) -> None:
    """A self-contained HTML page showing ``input_path``: an image embedded as base64, or a CSV
    rendered as a table (for ``snakemake --report``, which shows HTML files inline)."""
    source = Path(input_path)
    if not source.is_file():
        raise DataError(f"{source}: input file not found")
    suffix = source.suffix.lower()
    heading = title or source.name
    if suffix in _MIME:
        body = _image_body(source, suffix)
    elif suffix == ".csv":
        body = _csv_body(source)
    else:
        raise DataError(f"{source}: cannot wrap {suffix or 'extension-less'} files (gif, png, csv)")
    write_text(output, _html_page(heading, body))
    log.info("wrote %s", output)
