"""The one on-disk dataset form: a ``datasets.DatasetDict`` saved with ``save_to_disk``.

Splits ``train`` / ``validation`` / ``test``; columns: the domain's markup column (``formula``,
``html``, ``source`` or ``smiles``), ``filename`` and ``image``. Hub downloads and locally built
datasets are both written in this form, so training never cares where data came from.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from markup2im.errors import DataError
from markup2im.presets import MARKUP_COLUMNS

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
