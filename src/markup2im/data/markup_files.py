"""Reading markup files: ``.txt`` (one markup per line) and ``.jsonl`` (one ``{"markup": ...}``).

Rules, chosen so that one bad line never costs the others:

- blank lines (and ``.jsonl`` records whose markup is blank) are skipped and counted;
- a line that is not valid UTF-8 becomes a failed row: it is kept (decoded with replacement
  characters so the manifest can show it), never rendered, and its error names the file, the line
  and the byte offset; the other lines still render;
- so does a markup holding a lone surrogate (a ``.jsonl`` ``"\\ud800"`` escape, which UTF-8 cannot
  encode, so no renderer input or manifest could hold it) or a NUL character (C libraries take it
  for the end of the text: RDKit read ``CCO\\x00`` as ``CCO``, TeX refuses it); the row shows each
  as U+FFFD and its error names the file, the line, the character and its position;
- a ``.jsonl`` line that is not JSON, not an object, or lacks a string ``"markup"`` makes the file
  unreadable as a whole: DataError naming the file and every such line (up to a limit), since a
  structural mistake usually means the wrong file or format;
- lines of any length are accepted (a 100 KB line is handed to the renderer, which either renders
  it or records its error).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from markup2im.errors import DataError

logger = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl")
MAX_LISTED = 20  # bad .jsonl lines named in one error message
REPLACEMENT = "\ufffd"
# what no renderer input or manifest can hold: surrogates (UTF-8 cannot encode them; a valid
# pair in a .jsonl escape is joined into one character by json) and NUL (the end of a C string)
UNWRITABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass
class MarkupFile:
    """The markups of a file, each with the line it came from."""

    path: Path
    markups: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based line number of each markup
    errors: dict[int, str] = field(default_factory=dict)  # markup index -> why it is unreadable
    blank_lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.markups)


def _decode(raw: bytes, path: Path, number: int) -> tuple[str, str]:
    """(text, error): the decoded line, and an error message when it is not valid UTF-8."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return (
            raw.decode("utf-8", errors="replace"),
            f"{path}:{number}: invalid UTF-8 at byte {exc.start} of the line "
            f"({raw[exc.start : exc.start + 4]!r}); fix the file's encoding",
        )


def writable(text: str) -> tuple[str, int]:
    """(text, count): ``text`` with each character a renderer or a manifest cannot take (lone
    surrogates, NUL) replaced by U+FFFD, and how many were replaced."""
    return UNWRITABLE.subn(REPLACEMENT, text)


def replaced_note(count: int) -> str:
    """What a manifest row says when :func:`writable` replaced ``count`` characters of it."""
    return f"{count} character(s) that UTF-8 or a renderer cannot take replaced by U+FFFD"


def unwritable(text: str) -> str:
    """What in ``text`` no renderer can take, first occurrence first ('' when nothing): a lone
    surrogate or NUL, its position and why."""
    found = [m.start() for m in UNWRITABLE.finditer(text)]
    if not found:
        return ""
    first = text[found[0]]
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    if first == "\x00":
        return (
            f"NUL character at character {found[0]} of the markup{more} (renderers read it as "
            "the end of the text)"
        )
    return (
        f"lone surrogate U+{ord(first):04X} at character {found[0]} of the markup{more} (UTF-8 "
        "cannot encode it)"
    )


def _line_error(text: str, path: Path, number: int) -> str:
    """The error of a line whose markup no renderer can take ('' when it can)."""
    problem = unwritable(text)
    if not problem:
        return ""
    fix = "remove it" if problem.startswith("NUL") else "fix the \\u escape in the file"
    return f"{path}:{number}: {problem}; shown as U+FFFD; {fix}"


def read_markup_file(path: str | os.PathLike[str]) -> MarkupFile:
    """Read a ``.txt`` or ``.jsonl`` markup file (see the module docstring for the rules)."""
    source = Path(path)
    if source.is_dir():
        raise DataError(
            f"{source}: is a directory, not a markup file; give a .txt (one markup per line) "
            "or .jsonl file"
        )
    suffix = source.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{source}: unsupported markup file type {suffix or '(none)'!r}; use .txt (one markup "
            'per line) or .jsonl (one {"markup": ...} object per line)'
        )
    if not source.exists():
        raise DataError(f"{source}: markup file not found")
    if not source.is_file():  # a directory, FIFO or device: reading it could block or mislead
        raise DataError(f"{source}: not a regular file; give a .txt or .jsonl markup file")
    data = source.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the file's final newline
    result = MarkupFile(source)
    bad_json: list[str] = []
    for number, raw in enumerate(raw_lines, start=1):
        text, error = _decode(raw.rstrip(b"\r"), source, number)
        if not text.strip():
            result.blank_lines.append(number)
            continue
        if suffix == ".jsonl" and not error:
            try:
                record = json.loads(text)
            except ValueError as exc:
                bad_json.append(f"line {number}: not JSON ({exc})")
                continue
            if not isinstance(record, dict) or "markup" not in record:
                bad_json.append(f'line {number}: no "markup" key (expected {{"markup": "..."}})')
                continue
            if not isinstance(record["markup"], str):
                kind = type(record["markup"]).__name__
                bad_json.append(f'line {number}: "markup" is a {kind}, not a string')
                continue
            text = record["markup"]
            if not text.strip():
                result.blank_lines.append(number)
                continue
        else:
            text = text.strip()
        error = error or _line_error(text, source, number)
        text = writable(text)[0]
        if error:
            result.errors[len(result.markups)] = error
            logger.warning("%s", error)
        result.markups.append(text)
        result.lines.append(number)
    if bad_json:
        listed = "; ".join(bad_json[:MAX_LISTED])
        more = f"; and {len(bad_json) - MAX_LISTED} more" if len(bad_json) > MAX_LISTED else ""
        raise DataError(f"{source}: {len(bad_json)} malformed .jsonl line(s): {listed}{more}")
    if result.blank_lines:
        shown = ", ".join(map(str, result.blank_lines[:MAX_LISTED]))
        more = ", ..." if len(result.blank_lines) > MAX_LISTED else ""
        logger.info(
            "%s: skipped %d blank line(s) (line %s%s)", source, len(result.blank_lines), shown, more
        )
    if not result.markups:
        raise DataError(f"{source}: no markup in the file ({len(result.blank_lines)} blank lines)")
    logger.info("%s: read %d markup(s)", source, len(result.markups))
    return result
