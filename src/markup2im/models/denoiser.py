"""The denoising UNet, assembled from upstream diffusers parts.

The layout follows diffusers' ``UNet2DConditionModel`` (conv in, down levels with skip outputs, a
mid block, up levels with one more resnet than the down levels, group norm + SiLU + conv out), but
the attention levels use :class:`PositionalTransformerBlock`, whose image-position tables are sized
from the image size at that level. Parameters, config and weights are saved with diffusers'
``ModelMixin.save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from markup2im.errors import ConfigError
from markup2im.models.attention import PositionalTransformerBlock
from markup2im.presets import ModelPreset

RESNET_EPS = 1e-5
Tensor = torch.Tensor


def _resnet(in_ch: int, out_ch: int, temb: int, groups: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_ch, out_channels=out_ch, temb_channels=temb, groups=groups, eps=RESNET_EPS
    )


class _Level(nn.Module):
    """Resnets (each optionally followed by an attention block) and an optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions: nn.ModuleList | None = None

    def _block(self, i: int, x: Tensor, temb: Tensor, ctx: Tensor, mask: Tensor | None) -> Tensor:
        x = self.resnets[i](x, temb)
        if self.attentions is not None:
            x = self.attentions[i](x, ctx, mask)
        return x


class DownLevel(_Level):
    """One resolution of the down path; returns its output and the skip tensors it produced."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb: int,
        num_layers: int,
        groups: int,
        add_downsample: bool,
        attention: dict | None,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            self.resnets.append(_resnet(in_ch if i == 0 else out_ch, out_ch, temb, groups))
        if attention is not None:
            self.attentions = nn.ModuleList(
                PositionalTransformerBlock(out_ch, **attention) for _ in range(num_layers)
            )
        self.downsample = (
            Downsample2D(out_ch, use_conv=True, out_channels=out_ch, padding=1, name="op")
            if add_downsample
            else None
        )

    def forward(
        self, x: Tensor, temb: Tensor, ctx: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._block(i, x, temb, ctx, mask)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class UpLevel(_Level):
    """One resolution of the up path; each resnet takes one skip tensor concatenated on channels."""

    def __init__(
        self,
        prev_ch: int,
        out_ch: int,
        skip_channels: list[int],
        temb: int,
        groups: int,
        add_upsample: bool,
        attention: dict | None,
    ) -> None:
        super().__init__()
        for i, skip in enumerate(skip_channels):
            self.resnets.append(
                _resnet((prev_ch if i == 0 else out_ch) + skip, out_ch, temb, groups)
            )
        if attention is not None:
            self.attentions = nn.ModuleList(
                PositionalTransformerBlock(out_ch, **attention) for _ in skip_channels
            )
        self.upsample = (
            Upsample2D(out_ch, use_conv=True, out_channels=out_ch) if add_upsample else None
        )

    def forward(
        self, x: Tensor, skips: list[Tensor], temb: Tensor, ctx: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Consume skip tensors from the end of ``skips`` (shared with the other levels)."""
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._block(i, x, temb, ctx, mask)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class MidBlock(nn.Module):
    """Resnet, optional attention block, resnet, at the lowest resolution."""

    def __init__(self, ch: int, temb: int, groups: int, attention: dict | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(ch, ch, temb, groups), _resnet(ch, ch, temb, groups)])
        self.attention = PositionalTransformerBlock(ch, **attention) if attention else None

    def forward(self, x: Tensor, temb: Tensor, ctx: Tensor, mask: Tensor | None) -> Tensor:
        x = self.resnets[0](x, temb)
        if self.attention is not None:
            x = self.attention(x, ctx, mask)
        return self.resnets[1](x, temb)


class MarkupUNet(ModelMixin, ConfigMixin):
    """Epsilon-predicting UNet conditioned on markup states through cross-attention only."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        height: int,
        width: int,
        in_channels: int = 1,
        out_channels: int | None = None,
        block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512),
        attention_levels: tuple[bool, ...] = (False, False, True, True, True, True),
        layers_per_block: int = 2,
        mid_attention: bool = True,
        num_heads: int = 8,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 768,
        max_text_positions: int = 1025,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        sizes = self._level_sizes(height, width, len(block_out_channels), patch_size)
        if len(attention_levels) != len(block_out_channels):
            raise ConfigError("attention_levels and block_out_channels must have the same length")
        self.patch_size = patch_size
        shared = {"num_heads": num_heads, "cross_attention_dim": cross_attention_dim,
                  "max_text_positions": max_text_positions, "norm_num_groups": norm_num_groups}  # fmt: skip
        attention = [{**shared, "max_rows": rows, "max_cols": cols} for rows, cols in sizes]
        levels = [a if on else None for a, on in zip(attention, attention_levels, strict=True)]

        c0 = block_out_channels[0]
        temb = 4 * c0
        self.conv_in = nn.Conv2d(in_channels * patch_size**2, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb)
        shape = (temb, layers_per_block, norm_num_groups)
        skip_channels = self._build_down(block_out_channels, levels, *shape)
        self.mid_block = MidBlock(
            block_out_channels[-1], temb, norm_num_groups, attention[-1] if mid_attention else None
        )
        self._build_up(block_out_channels, levels, skip_channels, *shape)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, c0, eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        out_channels = out_channels or in_channels
        self.conv_out = nn.Conv2d(c0, out_channels * patch_size**2, kernel_size=3, padding=1)

    @staticmethod
    def _level_sizes(
        height: int, width: int, levels: int, patch_size: int
    ) -> list[tuple[int, int]]:
        """(rows, cols) of each level's feature map; ConfigError unless every level divides."""
        factor = patch_size * 2 ** (levels - 1)
        if patch_size < 1 or height % factor or width % factor:
            raise ConfigError(
                f"a {levels}-level UNet on {patch_size}x{patch_size} patches needs height and "
                f"width divisible by {factor}; got {width}x{height}"
            )
        return [
            (height // (patch_size * 2**i), width // (patch_size * 2**i)) for i in range(levels)
        ]

    def _build_down(
        self, channels: tuple[int, ...], attention: list[dict | None], temb: int, layers: int,
        groups: int,
    ) -> list[int]:  # fmt: skip
        """The down path; returns the channels of the skip tensors it leaves for the up path."""
        self.down_levels = nn.ModuleList()
        skip_channels = [channels[0]]
        prev = channels[0]
        for i, ch in enumerate(channels):
            last = i == len(channels) - 1
            self.down_levels.append(
                DownLevel(
                    prev, ch, temb, layers, groups, add_downsample=not last, attention=attention[i]
                )  # fmt: skip
            )
            skip_channels += [ch] * (layers + (0 if last else 1))
            prev = ch
        return skip_channels

    def _build_up(
        self, channels: tuple[int, ...], attention: list[dict | None], skip_channels: list[int],
        temb: int, layers: int, groups: int,
    ) -> None:  # fmt: skip
        """The up path, each level taking its skip tensors from the end of ``skip_channels``."""
        self.up_levels = nn.ModuleList()
        prev = channels[-1]
        for i in reversed(range(len(channels))):
            skips = [skip_channels.pop() for _ in range(layers + 1)]
            self.up_levels.append(
                UpLevel(
                    prev,
                    channels[i],
                    skips,
                    temb,
                    groups,
                    add_upsample=i > 0,
                    attention=attention[i],
                )  # fmt: skip
            )
            prev = channels[i]

    @classmethod
    def from_preset(
        cls,
        preset: ModelPreset,
        *,
        height: int,
        width: int,
        channels: int,
        cross_attention_dim: int,
        max_text_positions: int = 1025,
    ) -> MarkupUNet:
        """Build the UNet described by ``preset`` for images of the given size and colour."""
        preset.check_image_size(height, width)
        return cls(
            height=height,
            width=width,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=preset.block_out_channels,
            attention_levels=preset.attention_levels,
            layers_per_block=preset.layers_per_block,
            mid_attention=preset.mid_attention,
            num_heads=preset.num_heads,
            norm_num_groups=preset.norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            max_text_positions=max_text_positions,
            patch_size=preset.patch_size,
        )

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise in ``sample`` (B, C, H, W) at ``timesteps`` (B,) or scalar."""
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        # The sinusoid is computed in fp32; cast to the weights' dtype (fp16/bf16 models).
        t_emb = self.time_proj(timesteps).to(dtype=self.conv_in.weight.dtype)
        temb = self.time_embedding(t_emb)

        ctx, mask = encoder_hidden_states, encoder_attention_mask
        if self.patch_size > 1:
            sample = nn.functional.pixel_unshuffle(sample, self.patch_size)
        x = self.conv_in(sample)
        skips = [x]
        for level in self.down_levels:
            x, level_skips = level(x, temb, ctx, mask)
            skips += level_skips
        x = self.mid_block(x, temb, ctx, mask)
        for level in self.up_levels:
            x = level(x, skips, temb, ctx, mask)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        if self.patch_size > 1:
            x = nn.functional.pixel_shuffle(x, self.patch_size)
        return x
