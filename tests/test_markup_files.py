"""Reading .txt / .jsonl markup files: blank lines, bad encodings, bad JSON, huge lines."""

from __future__ import annotations

import json
import logging

import pytest

from markup2im.data.markup_files import read_markup_file
from markup2im.errors import DataError


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
