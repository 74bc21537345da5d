"""argparse types shared by the subcommands: paths to write, and positive numbers.

Checked while the command line is parsed, so a path of the wrong kind stops the command with
argparse's usage message and exit status 2, before any work and without a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _check_parents(path: Path, text: str) -> None:
    """The nearest existing ancestor of ``path`` must be a directory."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a directory")
            return


def output_dir(text: str) -> Path:
    """A directory to write: not an existing file, and not below one."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    _check_parents(path, text)
    return path


def output_file(text: str) -> Path:
    """A file to write: not an existing directory, and not below a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give the name of a file")
    _check_parents(path, text)
    return path


def positive_int(text: str) -> int:
    """An integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value
