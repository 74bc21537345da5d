"""Which markup encoders the workflow saves from the hub before training, and where.

Compute nodes often lack the internet, so each hub encoder is saved once to a local directory
(rule fetch_encoder, on the machine Snakemake runs on) and the jobs read that copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markup2im.names import OFFLINE_ENCODER
from markup2im.workflow import paths


def encoder_slug(name: str, revision: str | None) -> str:
    """The directory name of a fetched hub encoder: ``org--name`` (``@revision`` if pinned)."""
    slug = name.replace("/", "--")
    return f"{slug}@{revision}" if revision else slug


def is_local_encoder(name: str) -> bool:
    """``offline`` or a path (what `markup2im train` loads without the hub)."""
    return (
        name == OFFLINE_ENCODER
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or Path(name).expanduser().is_dir()
    )


@dataclass(frozen=True)
class HubEncoder:
    """A hub encoder that the workflow saves to a local directory on the login node."""

    name: str
    revision: str | None

    @property
    def slug(self) -> str:
        """The {encoder} wildcard of its fetch job."""
        return encoder_slug(self.name, self.revision)

    @property
    def path(self) -> str:
        """The local directory that the jobs read."""
        return paths.fill(paths.ENCODER, encoder=self.slug)
