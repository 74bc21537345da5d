"""Which examples get denoising frames and GIFs (the `select_examples` checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence

from markup2im.errors import ConfigError


def select_examples(
    available: Sequence[str], count: int, names: Sequence[str] | None, where: str
) -> list[str]:
    """Filenames of the selected examples: the first ``count`` of ``available`` (a split's
    filenames, in order), or the configured ``names`` after checking that ``where`` (the split,
    for the message) has them."""
    if not names:
        return list(available[:count])
    missing = sorted(set(names) - set(available))
    if missing:
        raise ConfigError(f"generate.frames_for names {', '.join(missing)}, not in {where}")
    return list(names)
