"""The command line: a path of the wrong kind stops every subcommand with a message, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from markup2im.cli import main

# {out}: where the command writes. Inputs need not exist: the output is checked while parsing.
OUTPUT_DIRS = {
    "render": ["render", "--domain", "math", "--markup-file", "m.txt", "--output-dir", "{out}"],
    "build-dataset": ["build-dataset", "--domain", "math", "--synthetic", "--output-dir", "{out}"],
    "download": ["download", "--dataset", "yuntian-deng/im2latex-100k", "--output-dir", "{out}"],
    "download --cache-dir": ["download", "--dataset", "yuntian-deng/im2latex-100k",
                             "--output-dir", "o", "--cache-dir", "{out}"],
    "train": ["train", "--dataset-dir", "d", "--method", "baseline", "--output-dir", "{out}"],
    "import-original": ["import-original", "--checkpoint", "c.pt", "--domain", "math",
                        "--output-dir", "{out}"],
    "generate": ["generate", "--model-dir", "m", "--dataset-dir", "d", "--output-dir", "{out}"],
}  # fmt: skip
OUTPUT_FILES = {
    "evaluate": ["evaluate", "--pred-dir", "p", "--gold-dir", "g", "--output", "{out}"],
    "evaluate --summary": ["evaluate", "--pred-dir", "p", "--gold-dir", "g", "--output", "o.csv",
                           "--summary", "{out}"],
    "gif denoise": ["gif", "denoise", "--frames-dir", "f", "--output", "{out}"],
    "gif compare": ["gif", "compare", "--gold", "g.png", "--frames", "a=f", "--output", "{out}"],
    "figures grid": ["figures", "grid", "--gold-dir", "g", "--pred", "a=p", "--output", "{out}"],
    "figures metrics-table": ["figures", "metrics-table", "--summary", "a=s.json",
                              "--output", "{out}"],
    "figures metrics-table --html": ["figures", "metrics-table", "--summary", "a=s.json",
                                     "--output", "t.csv", "--html", "{out}"],
    "figures paired": ["figures", "paired", "--baseline", "b.csv", "--treatment", "t.csv",
                       "--output", "{out}"],
    "figures paired --html": ["figures", "paired", "--baseline", "b.csv", "--treatment", "t.csv",
                              "--output", "p.csv", "--html", "{out}"],
    "figures paired-table": ["figures", "paired-table", "--paired", "a=p.csv", "--output", "{out}"],
    "figures paired-table --html": ["figures", "paired-table", "--paired", "a=p.csv",
                                    "--output", "p.csv", "--html", "{out}"],
    "figures metric-plots": ["figures", "metric-plots", "--metrics", "a=m.csv", "--output", "{out}"],
    "figures loss-curves": ["figures", "loss-curves", "--train-log", "a=l.csv", "--output", "{out}"],
    "figures html": ["figures", "html", "--input", "i.png", "--output", "{out}"],
}  # fmt: skip


def run(argv: list[str], out: Path, capsys) -> str:
    """Run the command with ``out`` filled in; it must stop with status 2 before any work."""
    with pytest.raises(SystemExit) as info:
        main([str(out) if a == "{out}" else a for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name", list(OUTPUT_DIRS))
def test_an_output_dir_that_is_a_file(name, tmp_path, capsys, monkeypatch):
    """These gave tracebacks (FileExistsError, NotADirectoryError) or replaced the file."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    assert f"{target} is a file, not a directory" in run(OUTPUT_DIRS[name], target, capsys)
    err = run(OUTPUT_DIRS[name], target / "below", capsys)
    assert f"{target} is a file, not a directory" in err
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("name", list(OUTPUT_FILES))
def test_an_output_file_that_is_a_directory(name, tmp_path, capsys, monkeypatch):
    """These gave tracebacks (IsADirectoryError) after doing the work."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "folder"
    target.mkdir()
    assert f"{target} is a directory; give the name of a file" in run(
        OUTPUT_FILES[name], target, capsys
    )
    blocker = tmp_path / "file"
    blocker.write_text("x\n")
    assert f"{blocker} is a file, not a directory" in run(
        OUTPUT_FILES[name], blocker / "out.csv", capsys
    )


def test_a_markup_path_that_is_a_directory(tmp_path, capsys):
    folder = tmp_path / "formulas.txt"
    folder.mkdir()
    code = main(["build-dataset", "--domain", "math", "--markup-file", str(folder),
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{folder}: is a directory, not a markup file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
