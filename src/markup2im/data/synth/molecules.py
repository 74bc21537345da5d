"""Real molecules: SMILES strings read at run time from data that RDKit ships.

The rdkit wheel carries ``first_5K.smi`` (the first 5,000 structures of the NCI database, one
"SMILES id" per line). It is located through ``rdkit.RDConfig`` or, failing that, by searching the
installed package, and shuffled with the seed. A user's own SMILES file goes through
``build-dataset --markup-file`` instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from markup2im.errors import DataError

SMILES_FILE = "first_5K.smi"


def shipped_smiles_path() -> Path:
    """Path of ``first_5K.smi`` inside the installed rdkit package."""
    try:
        from rdkit import RDConfig
    except ImportError:
        raise DataError(
            "the molecules generator reads SMILES shipped with RDKit, which is not installed; "
            "`pip install rdkit`, or pass your own SMILES with --markup-file"
        ) from None
    candidates = [Path(RDConfig.RDDataDir) / "NCI" / SMILES_FILE]
    for root in (RDConfig.RDDataDir, RDConfig.RDDocsDir, RDConfig.RDContribDir):
        candidates.extend(sorted(Path(root).rglob(SMILES_FILE)) if Path(root).is_dir() else [])
    import importlib.resources

    package_root = Path(str(importlib.resources.files("rdkit")))
    candidates.extend(sorted(package_root.rglob(SMILES_FILE)))
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        f"{SMILES_FILE} not found in the rdkit package ({package_root}); pass your own SMILES "
        "with --markup-file"
    )


@lru_cache(maxsize=1)
def shipped_smiles() -> tuple[str, ...]:
    """The SMILES of ``first_5K.smi``, in file order, without repeats."""
    path = shipped_smiles_path()
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if fields:
            seen.setdefault(fields[0], None)
    return tuple(seen)


def iter_markups(seed: int) -> Iterator[str]:
    """The shipped SMILES in a seeded random order (finite: about 5,000)."""
    smiles = list(shipped_smiles())
    random.Random(f"molecules-{seed}").shuffle(smiles)
    yield from smiles
