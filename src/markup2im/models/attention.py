"""The paper's transformer block for the UNet, with text and 2-D image position embeddings.

Inside each block: a learned 2-D image-position embedding is added to the feature map (the first
half of the channels is indexed by row, the second half by column) and the residual is taken after
that addition; a learned text-position embedding is added to the encoder states; then group norm,
a 1x1 projection in, self-attention, cross-attention to the markup, a GEGLU feed-forward (each
pre-layer-normed with its own residual), and a 1x1 projection out.

The parts are upstream diffusers modules (``Attention``, ``FeedForward``). Cross-attention takes a
per-example key-padding mask of shape (B, L), so an example's output does not depend on the other
markups in its batch.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn


class PositionalTransformerBlock(nn.Module):
    """Self- and cross-attention block with learned text and 2-D image position embeddings."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        cross_attention_dim: int,
        max_rows: int,
        max_cols: int,
        max_text_positions: int,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.row_channels = channels // 2
        self.max_rows, self.max_cols = max_rows, max_cols
        self.row_embedding = nn.Embedding(max_rows, self.row_channels)
        self.col_embedding = nn.Embedding(max_cols, channels - self.row_channels)
        self.text_position_embedding = nn.Embedding(max_text_positions, cross_attention_dim)

        head_dim = channels // num_heads
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = Attention(channels, heads=num_heads, dim_head=head_dim, bias=False)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = Attention(
            channels,
            cross_attention_dim=cross_attention_dim,
            heads=num_heads,
            dim_head=head_dim,
            bias=False,
        )
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.proj_out = nn.Linear(channels, channels)

    def image_positions(self, rows: int, cols: int) -> torch.Tensor:
        """The (C, rows, cols) embedding added to a feature map of that size."""
        if rows > self.max_rows or cols > self.max_cols:
            raise ValueError(
                f"feature map {rows}x{cols} exceeds the image-position table "
                f"{self.max_rows}x{self.max_cols}; the model was built for a smaller image"
            )
        row = self.row_embedding.weight[:rows]  # (rows, C/2)
        col = self.col_embedding.weight[:cols]  # (cols, C - C/2)
        row = row.t()[:, :, None].expand(-1, rows, cols)
        col = col.t()[:, None, :].expand(-1, rows, cols)
        return torch.cat([row, col], dim=0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map (B, C, H, W) features to the same shape, attending to (B, L, D) markup states.

        ``encoder_attention_mask`` is (B, L), true (or 1) where a token is attended.
        """
        b, c, h, w = hidden_states.shape
        memory_format = _memory_format(hidden_states)
        hidden_states = hidden_states + self.image_positions(h, w).to(hidden_states.dtype)
        residual = hidden_states

        length = encoder_hidden_states.shape[1]
        if length > self.text_position_embedding.num_embeddings:
            raise ValueError(
                f"markup encoding has {length} positions but the text-position table holds "
                f"{self.text_position_embedding.num_embeddings}"
            )
        context = encoder_hidden_states + self.text_position_embedding.weight[:length].to(
            encoder_hidden_states.dtype
        )
        mask = None
        if encoder_attention_mask is not None:
            # (B, 1, L) boolean key mask; diffusers repeats it per head batch-major.
            mask = encoder_attention_mask.to(device=context.device, dtype=torch.bool)[:, None, :]

        x = self.norm(hidden_states)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.proj_in(x)
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=context, attention_mask=mask) + x
        x = self.ff(self.norm3(x)) + x
        x = self.proj_out(x)
        # contiguous in the input's memory format: the strides of a permuted tensor would
        # otherwise make convolutions downstream pick other kernels, and results differ at 1e-6
        # between train and eval mode (diffusers' resnets only call contiguous() when training).
        # A channels-last model gets channels-last features back (the permute already is).
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
        return (x + residual).contiguous(memory_format=memory_format)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided 4-D tensor, else the default (NCHW) format."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
