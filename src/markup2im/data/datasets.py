"""The one on-disk dataset form: a ``datasets.DatasetDict`` saved with ``save_to_disk``.

Splits ``train`` / ``validation`` / ``test``; columns: the domain's markup column (``formula``,
``html``, ``source`` or ``smiles``), ``filename`` and ``image``. Hub downloads and locally built
datasets are both written in this form, so training never cares where data came from.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from markup2im.atomic import write_json
from markup2im.errors import DataError
from markup2im.presets import DOMAINS, MARKUP_COLUMNS

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def load_dataset_dir(path: str | os.PathLike[str]) -> datasets.DatasetDict:
    """Load a dataset directory written by ``download`` or ``build-dataset``."""
    root = Path(path)
    if not (root / "dataset_dict.json").is_file():
        raise DataError(
            f"{root}: not a markup2im dataset directory (no dataset_dict.json); "
            "create one with `markup2im build-dataset` or `markup2im download`"
        )
    try:
        return datasets.load_from_disk(str(root))
    except Exception as exc:  # datasets raises several unrelated types for broken directories
        raise DataError(f"{root}: cannot load dataset: {exc}") from exc


def markup_column(dataset: datasets.Dataset | datasets.DatasetDict) -> str:
    """Name of the markup column of a dataset (the one known markup column it has)."""
    columns = (
        next(iter(dataset.values())).column_names
        if isinstance(dataset, datasets.DatasetDict)
        else dataset.column_names
    )
    found = [c for c in columns if c in MARKUP_COLUMNS]
    if len(found) != 1:
        raise DataError(
            f"dataset has columns {columns}; expected exactly one markup column of {list(MARKUP_COLUMNS)}"
        )
    return found[0]


def load_split(path: str | os.PathLike[str], split: str) -> datasets.Dataset:
    """One split of a dataset directory, with a clear error for a missing split."""
    dataset = load_dataset_dir(path)
    if split not in dataset:
        raise DataError(f"{path}: no split {split!r}; available: {sorted(dataset)}")
    return dataset[split]


INFO_FILE = "markup2im.json"


@dataclass(frozen=True)
class DatasetInfo:
    """What training and generation need to know about a dataset directory."""

    domain: str
    markup_column: str
    width: int
    height: int
    channels: int


def write_dataset_info(path: str | os.PathLike[str], info: DatasetInfo) -> None:
    """Record ``info`` next to the splits of a dataset directory."""
    write_json(Path(path) / INFO_FILE, asdict(info))


def read_dataset_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Domain, markup column and image size of a dataset directory.

    Uses the ``markup2im.json`` record when present; otherwise derives them from the markup column
    (a hub dataset saved by other tools), using the domain's image size.
    """
    root = Path(path)
    record = root / INFO_FILE
    if record.is_file():
        try:
            return DatasetInfo(**json.loads(record.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{record}: invalid dataset record: {exc}") from exc
    column = markup_column(load_dataset_dir(root))
    spec = next(d for d in DOMAINS.values() if d.markup_column == column)
    return DatasetInfo(spec.name, column, spec.width, spec.height, spec.channels)
