"""Named presets: the only place where image sizes and model sizes live.

Domains describe the four markup domains of the paper (hub dataset, markup column, image size and
colour mode, encoder). Model presets (added below the domains) describe denoiser sizes.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class ModelPreset:
    """Shape of the denoising UNet; image-size dependent parts are derived when it is built.

    Level ``i`` works at ``height / (patch_size * 2**i)`` x ``width / (patch_size * 2**i)``: with
    ``patch_size`` p > 1 the denoiser sees each p x p patch of pixels as p*p channels (a lossless
    reshape) and puts them back at the end, so no level runs at full resolution.
    ``attention_levels[i]`` puts the
    positional transformer block after every resnet of that level (down and up path); the mid block
    has one when ``mid_attention`` is set. The time embedding is sinusoidal of width
    ``block_out_channels[0]`` followed by two linear layers of width ``4 * block_out_channels[0]``.
    """

    name: str
    block_out_channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    layers_per_block: int = 2  # resnets per down level; the up path has one more
    mid_attention: bool = True
    num_heads: int = 8
    norm_num_groups: int = 32
    # Default cap on markup tokens; each attention block holds a text-position table of
    # max_markup_length + 1 rows (the +1 is the end token), 1025 in the paper.
    max_markup_length: int = 1024
    patch_size: int = 1
    description: str = ""

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (downsampling steps + 1)."""
        return len(self.block_out_channels)

    @property
    def level_factors(self) -> list[int]:
        """Ratio between the image side and each level's feature-map side."""
        return [self.patch_size * 2**i for i in range(self.num_levels)]

    @property
    def downsample_factor(self) -> int:
        """Ratio between the image size and the lowest level's feature-map size."""
        return self.level_factors[-1]

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ConfigError unless both image sides survive every downsampling exactly."""
        f = self.downsample_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ConfigError(
                f"model preset {self.name!r} has {self.num_levels} levels (patch size "
                f"{self.patch_size}), so image height and width must be positive multiples of "
                f"{f}; got {width}x{height} (width x height)"
            )

    def with_attention_from(self, factor: int | None) -> ModelPreset:
        """This preset with cross-attention at every level whose feature map is at most
        1/``factor`` of the image side (``factor`` a power of two up to the lowest level's;
        None: the preset's own levels). The mid block keeps its attention either way."""
        if factor is None:
            return self
        powers = self.level_factors
        if factor not in powers:
            raise ConfigError(
                f"attention_from must be one of {', '.join(map(str, powers))} for model preset "
                f"{self.name!r} (a power of two: 4 puts cross-attention at 1/4 of the image side "
                f"and below), got {factor!r}"
            )
        levels = tuple(power >= factor for power in powers)
        return _check_preset(dataclasses.replace(self, attention_levels=levels))

    def level_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Feature-map (rows, cols) at each level for an image of ``height`` x ``width``."""
        self.check_image_size(height, width)
        return [(height // f, width // f) for f in self.level_factors]


def _check_preset(p: ModelPreset) -> ModelPreset:
    """Validate a preset's internal consistency when it is defined (fails at import, not later)."""
    if len(p.attention_levels) != len(p.block_out_channels):
        raise ConfigError(
            f"model preset {p.name!r}: attention_levels and channels differ in length"
        )
    for c in p.block_out_channels:
        if c % p.norm_num_groups:
            raise ConfigError(f"model preset {p.name!r}: {c} channels not divisible into groups")
    attn_channels = [c for c, a in zip(p.block_out_channels, p.attention_levels, strict=True) if a]
    if p.mid_attention:
        attn_channels.append(p.block_out_channels[-1])
    for c in attn_channels:
        if c % p.num_heads or c < 2:
            raise ConfigError(f"model preset {p.name!r}: {c} channels not divisible into heads")
    return p


MODEL_PRESETS: dict[str, ModelPreset] = {
    p.name: _check_preset(p)
    for p in (
        ModelPreset(
            "paper",
            block_out_channels=(128, 128, 256, 256, 512, 512),
            attention_levels=(False, False, True, True, True, True),
            layers_per_block=2,
            num_heads=8,
            norm_num_groups=32,
            # 207,565,057 parameters for math (768-dim gpt-neo-125M states, 1025 text positions),
            # 192,965,507 for molecules (384-dim ChemBERTa); the original's 208,996,609 and
            # 194,444,163 differ only by its fixed 64 + 320-row image-position tables
            # (pinned in tests/test_models.py).
            description="the paper's denoiser (207.6M parameters for math, 193.0M for molecules)",
        ),
        # CPU presets: attention only where the feature map is at most 1/8 of the image side,
        # since self-attention at high resolution dominates the step time on a CPU.
        # 16 channels at full resolution: the convolutions there dominate a CPU step, and a
        # narrower first level makes the step 1.5x faster with the same learning per step.
        ModelPreset(
            "small",
            block_out_channels=(16, 32, 64, 64, 64),
            attention_levels=(False, False, False, True, True),
            layers_per_block=1,
            num_heads=4,
            norm_num_groups=8,
            max_markup_length=512,
            description="CPU preset (~2.4M parameters with the offline encoder)",
        ),
        # The small preset without its full-resolution level: the denoiser sees 2x2 patches of
        # pixels as 4 channels, so its first level works at half the image side. 1.46x faster
        # steps than small, and as good per step (README, "The embedded default").
        ModelPreset(
            "small-p2",
            block_out_channels=(32, 64, 64, 64),
            attention_levels=(False, False, True, True),
            layers_per_block=1,
            num_heads=4,
            norm_num_groups=8,
            max_markup_length=512,
            patch_size=2,
            description="CPU workflow default: small on 2x2 patches (~2.6M parameters with the "
            "offline encoder)",
        ),
        ModelPreset(
            "tiny",
            block_out_channels=(16, 16, 32, 32),
            attention_levels=(False, False, False, True),
            layers_per_block=1,
            num_heads=4,
            norm_num_groups=8,
            max_markup_length=256,
            description="for tests (~0.46M parameters with the offline encoder)",
        ),
    )
}


def get_model_preset(name: str) -> ModelPreset:
    """Return the model preset called ``name`` or raise a ConfigError listing the known ones."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_PRESETS))
        raise ConfigError(f"unknown model preset {name!r}; known presets: {known}") from None
