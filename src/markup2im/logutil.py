"""Logging set-up shared by every command: one format, to stderr (rules redirect it to log:)."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once for a command-line run."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
