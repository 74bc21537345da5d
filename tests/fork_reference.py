"""The authors' model, written down independently of markup2im.original (for its tests).

The authors' diffusers fork is not imported (nor installed). This module writes down, from the
structure of diffusers 0.2.4 (``UNet2DConditionModel``, ``ResnetBlock``, ``SpatialTransformer``
with 1x1-convolution projections) plus the fork's three position tables per transformer block
(``wpe_h``, ``wpe_w``, ``wpe_l``: da03/diffusers, ``SpatialDecoderPositionEncoderPositionTransformer``),
(1) the fork's state-dict entries and shapes for a given architecture, (2) random weights for them,
and (3) a functional forward pass of that model read straight from such a state dict.
``tests/data/original-keys/*.tsv`` are the entries of the authors' four models as their code
builds them (read off the original); :func:`reference_keys` reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from markup2im.presets import get_model_preset

ROW, COL, TEXT = "wpe_h.weight", "wpe_w.weight", "wpe_l.weight"
FIXED_ROWS, FIXED_COLS, TEXT_ROWS = 64, 320, 1025  # the fork's max_h, max_w, max_l
REFERENCE_KEYS = Path(__file__).parent / "data" / "original-keys"


def reference_keys(domain: str) -> dict[str, tuple[int, ...]]:
    """The authors' model of ``domain``: every state-dict entry and its shape, in file order."""
    shapes = {}
    lines = (REFERENCE_KEYS / f"{domain}.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines:
        if line.startswith("#") or line == "key\tshape":
            continue
        key, shape = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.split("x"))
    return shapes


@dataclass(frozen=True)
class Arch:
    channels: tuple[int, ...]
    attention: tuple[bool, ...]
    layers: int
    heads: int
    groups: int
    in_channels: int
    context: int

    @classmethod
    def of(cls, preset: str, in_channels: int, context: int) -> Arch:
        p = get_model_preset(preset)
        return cls(
            p.block_out_channels,
            p.attention_levels,
            p.layers_per_block,
            p.num_heads,
            p.norm_num_groups,
            in_channels,
            context,
        )


def _resnet_shapes(prefix: str, cin: int, cout: int, temb: int) -> dict[str, tuple[int, ...]]:
    s = {
        "norm1.weight": (cin,),
        "norm1.bias": (cin,),
        "conv1.weight": (cout, cin, 3, 3),
        "conv1.bias": (cout,),
        "time_emb_proj.weight": (cout, temb),
        "time_emb_proj.bias": (cout,),
        "norm2.weight": (cout,),
        "norm2.bias": (cout,),
        "conv2.weight": (cout, cout, 3, 3),
        "conv2.bias": (cout,),
    }
    if cin != cout:
        s |= {"conv_shortcut.weight": (cout, cin, 1, 1), "conv_shortcut.bias": (cout,)}
    return {prefix + k: v for k, v in s.items()}


def _transformer_shapes(prefix: str, c: int, d: int) -> dict[str, tuple[int, ...]]:
    t = "transformer_blocks.0."
    s = {
        "norm.weight": (c,),
        "norm.bias": (c,),
        "proj_in.weight": (c, c, 1, 1),
        "proj_in.bias": (c,),
        f"{t}ff.net.0.proj.weight": (8 * c, c),
        f"{t}ff.net.0.proj.bias": (8 * c,),
        f"{t}ff.net.2.weight": (c, 4 * c),
        f"{t}ff.net.2.bias": (c,),
        "proj_out.weight": (c, c, 1, 1),
        "proj_out.bias": (c,),
        ROW: (FIXED_ROWS, c // 2),
        COL: (FIXED_COLS, c - c // 2),
        TEXT: (TEXT_ROWS, d),
    }
    for attn, kv in (("attn1", c), ("attn2", d)):
        s |= {
            f"{t}{attn}.to_q.weight": (c, c),
            f"{t}{attn}.to_k.weight": (c, kv),
            f"{t}{attn}.to_v.weight": (c, kv),
            f"{t}{attn}.to_out.0.weight": (c, c),
            f"{t}{attn}.to_out.0.bias": (c,),
        }
    for norm in ("norm1", "norm2", "norm3"):
        s |= {f"{t}{norm}.weight": (c,), f"{t}{norm}.bias": (c,)}
    return {prefix + k: v for k, v in s.items()}


def fork_shapes(a: Arch) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of the fork's UNet2DConditionModel for ``a``, with its shape."""
    c0, n = a.channels[0], len(a.channels)
    temb = 4 * c0
    s: dict[str, tuple[int, ...]] = {
        "conv_in.weight": (c0, a.in_channels, 3, 3),
        "conv_in.bias": (c0,),
        "time_embedding.linear_1.weight": (temb, c0),
        "time_embedding.linear_1.bias": (temb,),
        "time_embedding.linear_2.weight": (temb, temb),
        "time_embedding.linear_2.bias": (temb,),
    }
    prev = c0
    for i, c in enumerate(a.channels):
        for j in range(a.layers):
            s |= _resnet_shapes(f"down_blocks.{i}.resnets.{j}.", prev if j == 0 else c, c, temb)
            if a.attention[i]:
                s |= _transformer_shapes(f"down_blocks.{i}.attentions.{j}.", c, a.context)
        if i < n - 1:
            s |= {
                f"down_blocks.{i}.downsamplers.0.conv.weight": (c, c, 3, 3),
                f"down_blocks.{i}.downsamplers.0.conv.bias": (c,),
            }
        prev = c
    last = a.channels[-1]
    s |= _resnet_shapes("mid_block.resnets.0.", last, last, temb)
    s |= _transformer_shapes("mid_block.attentions.0.", last, a.context)
    s |= _resnet_shapes("mid_block.resnets.1.", last, last, temb)
    reversed_channels = list(reversed(a.channels))
    reversed_attention = list(reversed(a.attention))
    prev = reversed_channels[0]
    for i, out in enumerate(reversed_channels):
        skip_in = reversed_channels[min(i + 1, n - 1)]
        for j in range(a.layers + 1):
            skip = skip_in if j == a.layers else out
            cin = (prev if j == 0 else out) + skip
            s |= _resnet_shapes(f"up_blocks.{i}.resnets.{j}.", cin, out, temb)
            if reversed_attention[i]:
                s |= _transformer_shapes(f"up_blocks.{i}.attentions.{j}.", out, a.context)
        if i < n - 1:
            s |= {
                f"up_blocks.{i}.upsamplers.0.conv.weight": (out, out, 3, 3),
                f"up_blocks.{i}.upsamplers.0.conv.bias": (out,),
            }
        prev = out
    s |= {
        "conv_norm_out.weight": (c0,),
        "conv_norm_out.bias": (c0,),
        "conv_out.weight": (a.in_channels, c0, 3, 3),
        "conv_out.bias": (a.in_channels,),
    }
    return s


def random_fork_state(a: Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for the fork's model of architecture ``a``."""
    return random_state(fork_shapes(a), seed)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the given entries, of a size that keeps activations of order one
    through the network (norms near 1, weights scaled by their fan-in, small tables)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        if len(shape) == 1:
            centre = 1.0 if key.endswith(".weight") else 0.0
            state[key] = centre + 0.1 * noise
        elif key.endswith((ROW, COL, TEXT)):
            state[key] = 0.3 * noise
        else:
            state[key] = noise / math.sqrt(math.prod(shape[1:]))
    return state


def _resnet(sd, p: str, x, temb, groups: int):
    h = F.silu(F.group_norm(x, groups, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5))
    h = F.conv2d(h, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
    proj = F.linear(F.silu(temb), sd[p + "time_emb_proj.weight"], sd[p + "time_emb_proj.bias"])
    h = h + proj[:, :, None, None]
    h = F.silu(F.group_norm(h, groups, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5))
    h = F.conv2d(h, sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    if p + "conv_shortcut.weight" in sd:
        x = F.conv2d(x, sd[p + "conv_shortcut.weight"], sd[p + "conv_shortcut.bias"])
    return x + h


def _attention(sd, p: str, x, context, heads: int):
    q, k, v = (
        F.linear(y, sd[f"{p}to_{n}.weight"]) for y, n in ((x, "q"), (context, "k"), (context, "v"))
    )
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, sd[p + "to_out.0.weight"], sd[p + "to_out.0.bias"])


def _layer_norm(sd, p: str, x):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])


def _transformer(sd, p: str, x, context, heads: int, groups: int):
    b, c, h, w = x.shape
    rows, cols = sd[p + ROW][:h], sd[p + COL][:w]
    x = x + torch.cat(
        [rows.t()[:, :, None].expand(-1, h, w), cols.t()[:, None, :].expand(-1, h, w)]
    )
    residual = x
    context = context + sd[p + TEXT][: context.shape[1]]
    y = F.group_norm(x, groups, sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
    y = F.conv2d(y, sd[p + "proj_in.weight"], sd[p + "proj_in.bias"])
    y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)
    t = p + "transformer_blocks.0."
    normed = _layer_norm(sd, t + "norm1", y)
    y = _attention(sd, t + "attn1.", normed, normed, heads) + y
    y = _attention(sd, t + "attn2.", _layer_norm(sd, t + "norm2", y), context, heads) + y
    z = F.linear(
        _layer_norm(sd, t + "norm3", y),
        sd[t + "ff.net.0.proj.weight"],
        sd[t + "ff.net.0.proj.bias"],
    )
    value, gate = z.chunk(2, dim=-1)
    y = F.linear(value * F.gelu(gate), sd[t + "ff.net.2.weight"], sd[t + "ff.net.2.bias"]) + y
    y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return F.conv2d(y, sd[p + "proj_out.weight"], sd[p + "proj_out.bias"]) + residual


def reference_forward(sd, a: Arch, x, t, context):
    """The fork's UNet2DConditionModel forward pass, from its state dict (batch of one)."""
    c0, n = a.channels[0], len(a.channels)
    half = c0 // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=x.dtype) / half)
    angles = t.to(x.dtype)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # flip_sin_to_cos
    temb = F.linear(emb, sd["time_embedding.linear_1.weight"], sd["time_embedding.linear_1.bias"])
    temb = F.linear(
        F.silu(temb), sd["time_embedding.linear_2.weight"], sd["time_embedding.linear_2.bias"]
    )
    x = F.conv2d(x, sd["conv_in.weight"], sd["conv_in.bias"], padding=1)
    skips = [x]
    for i in range(n):
        for j in range(a.layers):
            x = _resnet(sd, f"down_blocks.{i}.resnets.{j}.", x, temb, a.groups)
            if a.attention[i]:
                x = _transformer(
                    sd, f"down_blocks.{i}.attentions.{j}.", x, context, a.heads, a.groups
                )
            skips.append(x)
        if i < n - 1:
            p = f"down_blocks.{i}.downsamplers.0.conv."
            x = F.conv2d(x, sd[p + "weight"], sd[p + "bias"], stride=2, padding=1)
            skips.append(x)
    x = _resnet(sd, "mid_block.resnets.0.", x, temb, a.groups)
    x = _transformer(sd, "mid_block.attentions.0.", x, context, a.heads, a.groups)
    x = _resnet(sd, "mid_block.resnets.1.", x, temb, a.groups)
    for i in range(n):
        for j in range(a.layers + 1):
            x = _resnet(
                sd, f"up_blocks.{i}.resnets.{j}.", torch.cat([x, skips.pop()], 1), temb, a.groups
            )
            if a.attention[n - 1 - i]:
                x = _transformer(
                    sd, f"up_blocks.{i}.attentions.{j}.", x, context, a.heads, a.groups
                )
        if i < n - 1:
            p = f"up_blocks.{i}.upsamplers.0.conv."
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.conv2d(x, sd[p + "weight"], sd[p + "bias"], padding=1)
    x = F.silu(
        F.group_norm(x, a.groups, sd["conv_norm_out.weight"], sd["conv_norm_out.bias"], 1e-5)
    )
    return F.conv2d(x, sd["conv_out.weight"], sd["conv_out.bias"], padding=1)
