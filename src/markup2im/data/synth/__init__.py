"""Seeded synthetic markup, one generator per domain.

Each module has ``iter_markups(seed)``: a reproducible stream whose first n items do not depend on
how many are asked for (so a larger dataset extends a smaller one with the same seed). Math,
tables and music are endless random generators; molecules are real SMILES shipped with RDKit.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator

from markup2im.errors import ConfigError, DataError
from markup2im.presets import get_domain

GENERATORS: dict[str, str] = {
    "math": "math",
    "tables": "tables",
    "music": "music",
    "molecules": "molecules",
}
MAX_DRAWS_PER_ITEM = 200  # give up when repeats dominate (a generator with too little variety)


DEFAULT_DIFFICULTY = "standard"


def iter_unique(domain: str, seed: int, difficulty: str = DEFAULT_DIFFICULTY) -> Iterator[str]:
    """The domain's seeded stream without repeats.

    ``difficulty`` other than ``standard`` picks another level of a generator that has levels
    (math: ``simple``); other domains have one level only.
    """
    spec = get_domain(domain)
    module = importlib.import_module(f"{__name__}.{GENERATORS[spec.name]}")
    levels = getattr(module, "DIFFICULTIES", (DEFAULT_DIFFICULTY,))
    if difficulty not in levels:
        raise ConfigError(
            f"the {domain} generator has no difficulty {difficulty!r}; known: {', '.join(levels)}"
        )
    stream = (
        module.iter_markups(seed)
        if difficulty == DEFAULT_DIFFICULTY
        else module.iter_markups(seed, difficulty)
    )
    seen: set[str] = set()
    misses = 0
    for markup in stream:
        if markup in seen:
            misses += 1
            if misses > MAX_DRAWS_PER_ITEM * (len(seen) + 1):
                return
            continue
        seen.add(markup)
        yield markup


def generate(domain: str, n: int, seed: int = 0, difficulty: str = DEFAULT_DIFFICULTY) -> list[str]:
    """The first ``n`` distinct markups of the domain's seeded stream."""
    markups = list(itertools.islice(iter_unique(domain, seed, difficulty), n))
    if len(markups) < n:
        raise DataError(
            f"the {domain} generator has only {len(markups)} distinct items, {n} requested; "
            "ask for fewer or pass your own markup with --markup-file"
        )
    return markups
