"""Named presets: the only place where image sizes and model sizes live.

Domains describe the four markup domains of the paper (hub dataset, markup column, image size and
colour mode, encoder). Model presets (added below the domains) describe denoiser sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from markup2im.errors import ConfigError


@dataclass(frozen=True)
class DomainSpec:
    """One markup domain: where its hub data lives and what its images look like."""

    name: str
    markup_column: str
    width: int
    height: int
    channels: int  # 1 = grayscale, 3 = RGB
    hub_dataset: str
    hub_encoder: str
    renderer: str

    @property
    def color_mode(self) -> str:
        """PIL mode of the dataset's images."""
        return "L" if self.channels == 1 else "RGB"


DOMAINS: dict[str, DomainSpec] = {
    "math": DomainSpec(
        "math",
        "formula",
        320,
        64,
        1,
        "yuntian-deng/im2latex-100k",
        "EleutherAI/gpt-neo-125M",
        "latex",
    ),
    "tables": DomainSpec(
        "tables", "html", 64, 64, 1, "yuntian-deng/im2html-100k", "EleutherAI/gpt-neo-125M", "html"
    ),
    "music": DomainSpec(
        "music",
        "source",
        448,
        192,
        1,
        "yuntian-deng/im2ly-35k-syn",
        "EleutherAI/gpt-neo-125M",
        "lilypond",
    ),
    "molecules": DomainSpec(
        "molecules",
        "smiles",
        128,
        128,
        3,
        "yuntian-deng/im2smiles-20k",
        "DeepChem/ChemBERTa-77M-MLM",
        "smiles",
    ),
}

MARKUP_COLUMNS: tuple[str, ...] = tuple(d.markup_column for d in DOMAINS.values())


def get_domain(name: str) -> DomainSpec:
    """Return the domain called ``name`` or raise a ConfigError that lists the known ones."""
    try:
        return DOMAINS[name]
    except KeyError:
        known = ", ".join(sorted(DOMAINS))
        raise ConfigError(f"unknown domain {name!r}; known domains: {known}") from None


def domain_for_hub_dataset(hub_id: str) -> DomainSpec | None:
    """Return the domain whose hub dataset is ``hub_id`` (None for other datasets)."""
    for spec in DOMAINS.values():
        if spec.hub_dataset == hub_id:
            return spec
    return None


# ---- model presets (sizes of the denoiser) -------------------------------------------------
