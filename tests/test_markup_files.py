"""Reading .txt / .jsonl markup files: blank lines, bad encodings, bad JSON, huge lines, text
that cannot be rendered or written (surrogates, NUL), and the manifests that show them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from markup2im.data.markup_files import read_markup_file, writable
from markup2im.data.render import RenderedItem, manifest_csv, read_manifest
from markup2im.errors import DataError

CLI = [sys.executable, "-m", "markup2im"]


def test_txt_skips_and_counts_blank_lines_and_keeps_line_numbers(tmp_path, caplog):
    path = tmp_path / "m.txt"
    path.write_bytes(b"\xef\xbb\xbfx^2\r\n\r\n  \\frac{a}{b}  \n\t\nlast")
    with caplog.at_level(logging.INFO):
        source = read_markup_file(path)
    assert source.markups == ["x^2", "\\frac{a}{b}", "last"]
    assert source.lines == [1, 3, 5]
    assert source.blank_lines == [2, 4]
    assert source.errors == {}
    assert "skipped 2 blank line(s) (line 2, 4)" in caplog.text


def test_invalid_utf8_becomes_a_failed_row_naming_file_and_line(tmp_path):
    path = tmp_path / "m.txt"
    path.write_bytes(b"good\nbad \xc3\x28 byte\nalso good\n")
    source = read_markup_file(path)
    assert len(source) == 3  # nothing lost: the bad line is kept as a row
    assert source.markups[0] == "good" and source.markups[2] == "also good"
    assert set(source.errors) == {1}
    assert f"{path}:2: invalid UTF-8 at byte 4" in source.errors[1]
    assert "\ufffd" in source.markups[1]


def test_jsonl_reads_multiline_markup(tmp_path):
    path = tmp_path / "m.jsonl"
    records = [{"markup": "{ c'4\n  d'4 }", "extra": 1}, {"markup": "   "}, {"markup": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    source = read_markup_file(path)
    assert source.markups == ["{ c'4\n  d'4 }", "x"]
    assert source.lines == [1, 3]
    assert source.blank_lines == [2, 4]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json at all", "line 2: not JSON"),
        ('{"formula": "x"}', 'line 2: no "markup" key'),
        ('["markup"]', 'line 2: no "markup" key'),
        ('{"markup": 3}', 'line 2: "markup" is a int'),
    ],
)
def test_jsonl_structural_errors_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "m.jsonl"
    path.write_text('{"markup": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_markup_file(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_jsonl_lists_every_bad_line_in_one_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('nope\n{"markup": "ok"}\n{}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"2 malformed .jsonl line\(s\): line 1: .*; line 3: "):
        read_markup_file(path)


def test_a_100kb_line_is_read_whole(tmp_path):
    huge = "x + " * 30_000
    path = tmp_path / "m.txt"
    path.write_text("a\n" + huge + "\nb\n", encoding="utf-8")
    source = read_markup_file(path)
    assert source.markups == ["a", huge.strip(), "b"]
    assert len(source.markups[1]) > 100_000


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.csv", b"x\n", "unsupported markup file type '.csv'"),
        ("empty.txt", b"\n \n", "no markup in the file (2 blank lines)"),
    ],
)
def test_unusable_files_raise_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_markup_file(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="markup file not found"):
        read_markup_file(tmp_path / "nowhere.txt")


def test_a_directory_is_called_a_directory(tmp_path):
    """It used to be reported as "not found" (or, without a suffix, as an unsupported type)."""
    for name in ("formulas.txt", "formulas"):
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(DataError, match=f"{folder}: is a directory, not a markup file"):
            read_markup_file(folder)


# ---- text that cannot be rendered or written: one bad line fails one row -------------------------

UNWRITABLE = [  # (.jsonl markup, what its error says): UTF-8 cannot encode a lone surrogate
    ("a\ud800b", "lone surrogate U+D800 at character 1"),
    ("\udfff", "lone surrogate U+DFFF at character 0"),
    ("x^2 \udc80", "lone surrogate U+DC80 at character 4"),
    ("\ud800\ud800\udc00", "lone surrogate U+D800 at character 0"),  # then a valid pair
    ("a\x00b", "NUL character at character 1"),  # renderers read NUL as the end of the text
    ("\x00", "NUL character at character 0"),
]


@pytest.mark.parametrize(("markup", "expected"), UNWRITABLE)
def test_jsonl_text_that_cannot_be_rendered_fails_its_row_only(tmp_path, markup, expected):
    """A lone surrogate crashed render, build-dataset and draw with a UnicodeEncodeError; a NUL
    made RDKit read "CCO\\x00" as "CCO" with no error."""
    path = tmp_path / "m.jsonl"
    records = [{"markup": "x"}, {"markup": markup}, {"markup": "y"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    source = read_markup_file(path)
    assert len(source) == 3 and source.lines == [1, 2, 3]
    assert source.markups[0] == "x" and source.markups[2] == "y"
    assert set(source.errors) == {1}
    assert source.errors[1].startswith(f"{path}:2: {expected}")
    assert "U+FFFD" in source.errors[1]  # says how the manifest shows it
    for text in (*source.markups, *source.errors.values()):
        text.encode("utf-8")  # every row can be written
        assert "\x00" not in text
    assert "\ufffd" in source.markups[1]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a\x00b", "2: NUL character at character 1"),
        (b"\x00\x00\x00", "2: NUL character at character 0"),
        (b"\xed\xa0\x80 surrogate bytes", "2: invalid UTF-8 at byte 0"),
        (b"bad \xff and \x00", "2: invalid UTF-8 at byte 4"),
    ],
)
def test_txt_nul_and_undecodable_bytes_fail_their_row_only(tmp_path, raw, expected):
    path = tmp_path / "m.txt"
    path.write_bytes(b"x\n" + raw + b"\ny\n")
    source = read_markup_file(path)
    assert source.markups[0] == "x" and source.markups[2] == "y" and len(source) == 3
    assert set(source.errors) == {1}
    assert f"{path}:{expected}" in source.errors[1]
    assert "\x00" not in source.markups[1]
    source.markups[1].encode("utf-8")


def test_valid_surrogate_pairs_and_other_control_characters_are_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    markups = ["\ud83d\ude00 x", "a\x01b\x7f", "tab\there"]
    # json.dumps writes the emoji as the escaped pair \ud83d\ude00, which JSON joins
    path.write_text("".join(json.dumps({"markup": m}) + "\n" for m in markups), encoding="utf-8")
    source = read_markup_file(path)
    assert source.errors == {}
    assert source.markups == ["\U0001f600 x", "a\x01b\x7f", "tab\there"]


def test_writable_replaces_what_utf8_cannot_encode_and_says_how_much():
    assert writable("plain \u00e9") == ("plain \u00e9", 0)
    assert writable("a\ud800b\udfff") == ("a\ufffdb\ufffd", 2)
    assert writable("a\x00b") == ("a\ufffdb", 1)
    long = "x" * 200_000 + "\ud800"
    text, replaced = writable(long)
    assert replaced == 1 and text.endswith("\ufffd") and len(text) == len(long)


# ---- the rules through the render command and its manifest --------------------------------------


def test_render_command_fails_only_the_bad_lines_and_writes_every_row(tmp_path):
    """It used to stop with a UnicodeEncodeError traceback after writing the PNGs, and no
    manifest."""
    path = tmp_path / "f.jsonl"
    markups = ["x^2", "a\ud800b", "y\x00^3", "z^4"]
    path.write_text("".join(json.dumps({"markup": m}) + "\n" for m in markups), encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.run(
        [*CLI, "render", "--domain", "math", "--markup-file", str(path), "--output-dir",
         str(out), "--workers", "1", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "rendered 2 of 4 (failed 2" in proc.stdout
    rows = read_manifest(out / "manifest.csv")
    assert [r["line"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["ok"] for r in rows] == ["true", "false", "false", "true"]
    assert rows[1]["error"].startswith(f"{path}:2: lone surrogate U+D800")
    assert rows[2]["error"].startswith(f"{path}:3: NUL character")
    assert rows[1]["markup"] == "a\ufffdb" and rows[2]["markup"] == "y\ufffd^3"
    assert f"{path}:2: lone surrogate" in proc.stderr  # the log names the line too


def test_render_manifest_replaces_unwritable_text_and_says_so_in_the_row(tmp_path):
    """Rows made through the Python API may hold any str; the manifest is still written."""
    rows = [
        RenderedItem(0, "x^2", "a.png", True),
        RenderedItem(1, "a\ud800b", "b.png", False, "renderer said \udcff"),
    ]
    path = tmp_path / "manifest.csv"
    path.write_text(manifest_csv(rows, [1, 2]), encoding="utf-8")
    read = read_manifest(path)
    assert read[0]["error"] == "" and read[0]["markup"] == "x^2"
    assert read[1]["markup"] == "a\ufffdb"
    assert read[1]["error"].startswith("renderer said \ufffd")
    assert (
        "2 character(s) that UTF-8 or a renderer cannot take replaced by U+FFFD" in read[1]["error"]
    )


def test_read_manifest_accepts_markup_of_any_length(tmp_path):
    """csv's field limit (128 KB) made read_manifest fail on a long markup."""
    huge = "x + " * 100_000  # 400 KB
    rows = [RenderedItem(0, huge, "a.png", False, "too small"), RenderedItem(1, "y", "b.png", True)]
    path = tmp_path / "manifest.csv"
    path.write_text(manifest_csv(rows, [1, 2]), encoding="utf-8")
    read = read_manifest(path)
    assert read[0]["markup"] == huge and read[1]["markup"] == "y"


def test_a_fifo_or_directory_is_not_a_markup_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_markup_file(fifo)
    with pytest.raises(DataError, match="is a directory, not a markup file"):
        read_markup_file(tmp_path)
    with pytest.raises(DataError, match="markup file not found"):
        read_markup_file(tmp_path / "missing.txt")
