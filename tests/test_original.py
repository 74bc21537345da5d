"""Tests for markup2im.original: importing the checkpoints released by the paper's authors.

The authors' diffusers fork is not imported (nor installed). Instead this file writes down, from
the structure of diffusers 0.2.4 (``UNet2DConditionModel``, ``ResnetBlock``, ``SpatialTransformer``
with 1x1-convolution projections) plus three position tables per transformer block, (1) the
fork's state-dict entries and shapes for a given architecture and (2) a functional forward pass
of that model read straight from such a state dict. The importer is checked against both: the
entries it expects, where each tensor lands, and that the imported denoiser computes what the
reference computes. Position tables here have the fork's fixed 64 rows x 320 columns and 1025
text positions, longer than what a small model uses, so the slicing is exercised too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from markup2im.cli import main as cli_main
from markup2im.data.datasets import DatasetInfo, write_dataset_info
from markup2im.errors import ModelError
from markup2im.model import Markup2ImModel
from markup2im.models.denoiser import MarkupUNet
from markup2im.original import (
    ORIGINAL_POSITION_NAMES,
    PROVENANCE_FILE,
    convert_state_dict,
    import_original,
    load_original_state_dict,
    original_layout,
)
from markup2im.presets import DOMAINS, get_model_preset

ROW = f"{ORIGINAL_POSITION_NAMES['row_embedding']}.weight"
COL = f"{ORIGINAL_POSITION_NAMES['col_embedding']}.weight"
TEXT = f"{ORIGINAL_POSITION_NAMES['text_position_embedding']}.weight"
FIXED_ROWS, FIXED_COLS, TEXT_ROWS = 64, 320, 1025
OFFLINE_WIDTH = 64  # hidden size of the offline encoder (the cross-attention width)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the fork's model, written down independently of markup2im.original ----------------------


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
    """Random weights of a size that keeps activations of order one through the network."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in fork_shapes(a).items():
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


# ---- shared fixtures ---------------------------------------------------------------------------

TINY = Arch.of("tiny", in_channels=1, context=OFFLINE_WIDTH)
TINY_HW = (16, 32)  # tiny has 4 levels: 16x32, 8x16, 4x8, 2x4


def _import(tmp: Path, state: dict, *, domain: str = "math", hw=TINY_HW, name="model") -> Path:
    checkpoint = tmp / f"{name}.pt.100"
    torch.save(state, checkpoint)
    out = tmp / name
    import_original(
        checkpoint, out, domain=domain, encoder="offline", model_preset="tiny",
        height=hw[0], width=hw[1], max_markup_length=32,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def fork_state() -> dict[str, torch.Tensor]:
    return random_fork_state(TINY, seed=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, fork_state) -> Path:
    return _import(tmp_path_factory.mktemp("import"), fork_state)


def _tiny_unet(channels: int = 1) -> MarkupUNet:
    return MarkupUNet.from_preset(
        get_model_preset("tiny"), height=TINY_HW[0], width=TINY_HW[1], channels=channels,
        cross_attention_dim=OFFLINE_WIDTH, max_text_positions=33,
    )  # fmt: skip


# ---- layout ------------------------------------------------------------------------------------


def _compatible(entry_kind: str, ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    if entry_kind == "conv1x1":
        return theirs == (*ours, 1, 1)
    if entry_kind == "leading_rows":
        return theirs[1:] == ours[1:] and theirs[0] >= ours[0]
    return theirs == ours


def test_paper_math_layout_is_the_originals_999_entries():
    """The fork's math model: 999 entries, 208,996,609 parameters (measured on the original
    code); the importer expects exactly those entries, with compatible shapes."""
    shapes = fork_shapes(Arch.of("paper", in_channels=1, context=768))
    assert len(shapes) == 999
    assert sum(math.prod(s) for s in shapes.values()) == 208_996_609
    spec = DOMAINS["math"]
    with torch.device("meta"):
        unet = MarkupUNet.from_preset(
            get_model_preset("paper"), height=spec.height, width=spec.width, channels=1,
            cross_attention_dim=768, max_text_positions=1025,
        )  # fmt: skip
    layout = original_layout(unet)
    assert {e.original for e in layout} == set(shapes)
    assert len(layout) == len(shapes)
    bad = [e for e in layout if not _compatible(e.kind, e.shape, shapes[e.original])]
    assert not bad, bad[:5]
    kinds = {e.kind for e in layout}
    assert kinds == {"copy", "conv1x1", "leading_rows"}
    assert sum(e.kind == "conv1x1" for e in layout) == 2 * 21  # proj_in, proj_out x 21 blocks


def test_rgb_layout_matches_too():
    a = Arch.of("tiny", in_channels=3, context=OFFLINE_WIDTH)
    layout = original_layout(_tiny_unet(channels=3))
    shapes = fork_shapes(a)
    assert {e.original for e in layout} == set(shapes)
    assert all(_compatible(e.kind, e.shape, shapes[e.original]) for e in layout)


# ---- import ------------------------------------------------------------------------------------


def test_import_writes_a_model_directory_that_loads_strictly(imported, fork_state):
    model = Markup2ImModel.from_pretrained(imported)
    ours = model.denoiser.state_dict()
    # every entry of the file was used, every parameter filled (load_state_dict strict=True)
    assert len(ours) == len(fork_state)
    fresh = _tiny_unet()
    missing, unexpected = fresh.load_state_dict(ours, strict=True)
    assert not missing and not unexpected
    record = json.loads((imported / PROVENANCE_FILE).read_text())
    assert record["entries"] == len(fork_state) and len(record["sha256"]) == 64
    assert (model.height, model.width, model.channels) == (*TINY_HW, 1)
    assert model.noise_scheduler().config.num_train_timesteps == 1000


def test_known_tensors_land_where_they_must(imported, fork_state):
    ours = Markup2ImModel.from_pretrained(imported).denoiser.state_dict()
    block = "down_blocks.3.attentions.0."
    # a 1x1 convolution kernel becomes the linear weight
    kernel = fork_state[block + "proj_in.weight"]
    assert torch.equal(ours["down_levels.3.attentions.0.proj_in.weight"], kernel[:, :, 0, 0])
    assert torch.equal(
        ours["up_levels.0.attentions.1.proj_out.weight"],
        fork_state["up_blocks.0.attentions.1.proj_out.weight"][:, :, 0, 0],
    )
    # position tables: the rows and columns this level (2x4) uses, the markup positions kept
    assert torch.equal(
        ours["down_levels.3.attentions.0.row_embedding.weight"], fork_state[block + ROW][:2]
    )
    assert torch.equal(
        ours["down_levels.3.attentions.0.col_embedding.weight"], fork_state[block + COL][:4]
    )
    assert torch.equal(
        ours["mid_block.attention.text_position_embedding.weight"],
        fork_state["mid_block.attentions.0." + TEXT][:33],
    )
    pairs = {
        "down_levels.3.attentions.0.attn2.to_k.weight": block
        + "transformer_blocks.0.attn2.to_k.weight",
        "down_levels.3.attentions.0.ff.net.0.proj.weight": block
        + "transformer_blocks.0.ff.net.0.proj.weight",
        "down_levels.3.attentions.0.norm3.bias": block + "transformer_blocks.0.norm3.bias",
        "down_levels.2.resnets.0.conv_shortcut.weight": "down_blocks.2.resnets.0.conv_shortcut.weight",
        "down_levels.0.downsample.conv.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "up_levels.2.upsample.conv.bias": "up_blocks.2.upsamplers.0.conv.bias",
        "mid_block.attention.attn1.to_q.weight": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "mid_block.resnets.1.time_emb_proj.weight": "mid_block.resnets.1.time_emb_proj.weight",
        "time_embedding.linear_2.bias": "time_embedding.linear_2.bias",
        "conv_out.weight": "conv_out.weight",
    }
    for our_key, their_key in pairs.items():
        assert torch.equal(ours[our_key], fork_state[their_key]), our_key


def test_conv_1x1_equals_the_linear_layer_on_every_pixel(fork_state):
    kernel = fork_state["mid_block.attentions.0.proj_in.weight"]
    bias = fork_state["mid_block.attentions.0.proj_in.bias"]
    weights = convert_state_dict(fork_state, _tiny_unet())
    linear = weights["mid_block.attention.proj_in.weight"]
    x = torch.randn(1, kernel.shape[1], 3, 5, generator=torch.Generator().manual_seed(3))
    conv = F.conv2d(x, kernel, bias)
    tokens = F.linear(x.permute(0, 2, 3, 1), linear, weights["mid_block.attention.proj_in.bias"])
    torch.testing.assert_close(tokens.permute(0, 3, 1, 2), conv, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("domain", "channels", "hw"), [("math", 1, TINY_HW), ("molecules", 3, (24, 24))]
)
def test_imported_denoiser_computes_what_the_original_computes(tmp_path, domain, channels, hw):
    arch = Arch.of("tiny", in_channels=channels, context=OFFLINE_WIDTH)
    state = random_fork_state(arch, seed=channels)
    model = Markup2ImModel.from_pretrained(_import(tmp_path, state, domain=domain, hw=hw))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, channels, *hw, generator=g)
    context = torch.randn(1, 7, OFFLINE_WIDTH, generator=g)
    mask = torch.ones(1, 7, dtype=torch.bool)
    double = {k: v.double() for k, v in state.items()}
    for t in (0, 537, 999):
        timesteps = torch.tensor([t])
        with torch.no_grad():
            ours = model(x, timesteps, context, mask)
            theirs = reference_forward(double, arch, x.double(), timesteps, context.double())
        assert theirs.abs().max() > 0.1  # a live network, not a zero output
        torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_paper_size_math_model_computes_what_the_original_computes():
    """The whole paper model at 64x320 (six levels, 21 transformer blocks, 32 groups, a 768-dim
    context): about 10 s and 2 GB on one CPU thread."""
    arch = Arch.of("paper", in_channels=1, context=768)
    state = random_fork_state(arch, seed=11)
    with torch.device("meta"):
        unet = MarkupUNet.from_preset(
            get_model_preset("paper"), height=64, width=320, channels=1,
            cross_attention_dim=768, max_text_positions=1025,
        )  # fmt: skip
    unet.load_state_dict(convert_state_dict(state, unet), strict=True, assign=True)
    unet.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 64, 320, generator=g)
    context = torch.randn(1, 12, 768, generator=g)
    timesteps = torch.tensor([700])
    with torch.no_grad():
        ours = unet(x, timesteps, context, torch.ones(1, 12, dtype=torch.bool))
        theirs = reference_forward(state, arch, x, timesteps, context)
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_checkpoint_from_a_distributed_run_loses_its_module_prefix(tmp_path, fork_state):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in fork_state.items()}, path)
    loaded = load_original_state_dict(path)
    assert set(loaded) == set(fork_state)


# ---- errors name the entry ---------------------------------------------------------------------


def _problem(state: dict) -> str:
    with pytest.raises(ModelError) as info:
        convert_state_dict(state, _tiny_unet(), source="released.pt")
    return str(info.value)


def test_unknown_entry_fails_naming_it(fork_state):
    state = dict(fork_state)
    state["down_blocks.3.attentions.0.extra_gate.weight"] = torch.zeros(3)
    message = _problem(state)
    assert "released.pt" in message
    assert "unexpected entry down_blocks.3.attentions.0.extra_gate.weight (3,)" in message


def test_wrong_shape_fails_naming_it(fork_state):
    state = dict(fork_state)
    key = "up_blocks.1.resnets.0.conv1.weight"
    state[key] = torch.zeros(5, 5, 3, 3)
    message = _problem(state)
    assert key in message and "(5, 5, 3, 3)" in message
    # a 1x1 kernel given as a plain matrix is a wrong shape as well
    state = dict(fork_state)
    key = "mid_block.attentions.0.proj_out.weight"
    state[key] = state[key][:, :, 0, 0]
    assert f"{key}: shape (32, 32), expected (32, 32, 1, 1)" in _problem(state)


def test_missing_entry_and_short_position_table_fail_naming_them(fork_state):
    state = dict(fork_state)
    del state["conv_norm_out.bias"]
    row = "down_blocks.3.attentions.0." + ROW
    state[row] = state[row][:1]
    message = _problem(state)
    assert "missing entry conv_norm_out.bias" in message
    assert f"{row}: shape (1, 16), expected (at least 2, 16)" in message


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelError, match="not a state dict"):
        load_original_state_dict(path)
    with pytest.raises(ModelError, match="does not exist"):
        load_original_state_dict(tmp_path / "absent.pt")
    pointer = tmp_path / "model_e100_lr0.0001.pt.100"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 836\n")
    with pytest.raises(ModelError, match="Git LFS pointer"):
        load_original_state_dict(pointer)


# ---- the command line, then generate and evaluate with the imported model -----------------------


def _tables_dataset(root: Path) -> Path:
    features = datasets.Features(
        {"html": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits = {}
    for split, n in {"train": 1, "validation": 1, "test": 2}.items():
        images = []
        for i in range(n):
            image = Image.new("L", (64, 64), 255)
            ImageDraw.Draw(image).rectangle([4 + 9 * i, 6, 30, 20 + i], fill=0)
            images.append(image)
        splits[split] = datasets.Dataset.from_dict(
            {
                "html": [f"<table><tr><td>{i}</td></tr></table>" for i in range(n)],
                "filename": [f"{split}_{i}.png" for i in range(n)],
                "image": images,
            },
            features=features,
        )
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("tables", "html", 64, 64, 1))
    return root


def test_cli_import_then_generate_and_evaluate(tmp_path, capsys):
    checkpoint = tmp_path / "model_e100_lr0.0001.pt.100"
    torch.save(random_fork_state(TINY, seed=7), checkpoint)
    out = tmp_path / "imported"
    code = cli_main(
        ["import-original", "--checkpoint", str(checkpoint), "--domain", "tables",
         "--encoder", "offline", "--model-preset", "tiny", "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    data = _tables_dataset(tmp_path / "tables")
    samples = tmp_path / "samples"
    code = cli_main(
        ["generate", "--model-dir", str(out), "--dataset-dir", str(data), "--output-dir",
         str(samples), "--sampler", "ddim", "--num-inference-steps", "2", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (samples / "images").iterdir()) == ["test_0.png", "test_1.png"]
    with Image.open(samples / "images" / "test_0.png") as image:
        assert image.size == (64, 64)
    code = cli_main(
        ["evaluate", "--pred-dir", str(samples / "images"), "--gold-dir", str(samples / "gold"),
         "--output", str(tmp_path / "metrics.csv"), "--workers", "1"]
    )  # fmt: skip
    assert code == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "filename,dtw,dtw_shift,ssim,mse"


def test_cli_import_of_a_foreign_file_exits_2_naming_the_entry(tmp_path, capsys):
    checkpoint = tmp_path / "other.pt"
    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2)}, checkpoint)
    code = cli_main(
        ["import-original", "--checkpoint", str(checkpoint), "--domain", "tables",
         "--encoder", "offline", "--model-preset", "tiny", "--output-dir", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "unexpected entry encoder.layer.0.weight (2, 2)" in err
    assert "missing entry conv_in.weight" in err
    assert not (tmp_path / "o").exists()


def test_cli_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["import-original", "--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--domain", "--encoder", "--output-dir"):
        assert flag in text
    assert np.all([d in text for d in DOMAINS])
