"""Model parts: the positional transformer block, the denoising UNet, the markup encoder."""

from markup2im.models.attention import PositionalTransformerBlock
from markup2im.models.denoiser import MarkupUNet
from markup2im.models.encoder import OFFLINE, MarkupEncoder

__all__ = ["OFFLINE", "MarkupEncoder", "MarkupUNet", "PositionalTransformerBlock"]
