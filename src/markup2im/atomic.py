"""Atomic outputs: write under a temporary name in the same directory, then rename.

An interrupted step therefore never leaves a file (or directory) that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _temp_name(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        directory = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.chmod(directory, 0o777 & ~_umask())
        return Path(directory)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates owner-only files; give the result the mode a plain open() would have.
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it replaces ``path`` only on success.

    The temporary name keeps the suffix so that writers choosing a format by extension work.
    """
    target = Path(path)
    tmp = _temp_name(target, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it becomes ``path`` only on success.

    An existing ``path`` is replaced as a whole after the new content is complete.
    """
    target = Path(path)
    tmp = _temp_name(target, is_dir=True)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_image(image: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Save a PIL image atomically (format chosen from the suffix of ``path``)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        image.save(tmp, format=kwargs.pop("format", None) or _pil_format(target), **kwargs)


def _pil_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "gif": "GIF"}.get(suffix, suffix.upper())
