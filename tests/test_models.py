"""Tests for the model presets, the positional transformer block and the denoising UNet."""

from __future__ import annotations

import pytest
import torch

from markup2im.errors import ConfigError
from markup2im.models.attention import PositionalTransformerBlock
from markup2im.models.denoiser import MarkupUNet
from markup2im.presets import DOMAINS, MODEL_PRESETS, get_model_preset

CPU_PRESETS = [name for name in MODEL_PRESETS if name != "paper"]
CTX = 64  # the offline encoder's width


pytestmark = pytest.mark.usefixtures("one_thread")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_unet(preset: str, height: int, width: int, channels: int, ctx: int, positions: int):
    with torch.device("meta"):
        return MarkupUNet.from_preset(
            get_model_preset(preset),
            height=height,
            width=width,
            channels=channels,
            cross_attention_dim=ctx,
            max_text_positions=positions,
        )


# Our paper preset, exactly (encoder width 768 for gpt-neo-125M, 384 for ChemBERTa-77M-MLM; 1025
# text positions). Pinned: a drift of any size is a change of the model.
PAPER_PARAMETERS = {
    "math": 207_565_057,
    "tables": 207_470_849,
    "music": 207_659_265,
    "molecules": 192_965_507,
}
# The original's (the authors' diffusers fork): its math model file holds 208,996,609 parameters.
ORIGINAL_PARAMETERS = {"math": 208_996_609, "molecules": 194_444_163}
ORIGINAL_ROWS, ORIGINAL_COLS = 64, 320  # the fork's fixed image-position tables, in every block


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_paper_parameter_count_is_pinned(domain):
    spec = DOMAINS[domain]
    ctx = 384 if domain == "molecules" else 768
    model = _meta_unet("paper", spec.height, spec.width, spec.channels, ctx, 1025)
    assert _count(model) == PAPER_PARAMETERS[domain]


@pytest.mark.parametrize("domain", sorted(ORIGINAL_PARAMETERS))
def test_paper_parameter_count_differs_from_the_original_by_the_position_tables(domain):
    """The one documented difference: our image-position tables are sized per level (rows + cols
    of that level), the original's are 64 + 320 rows in every block."""
    spec = DOMAINS[domain]
    ctx = 384 if domain == "molecules" else 768
    model = _meta_unet("paper", spec.height, spec.width, spec.channels, ctx, 1025)
    blocks = [m for m in model.modules() if isinstance(m, PositionalTransformerBlock)]
    extra = sum(
        (ORIGINAL_ROWS - b.max_rows) * b.row_channels
        + (ORIGINAL_COLS - b.max_cols) * (b.channels - b.row_channels)
        for b in blocks
    )
    assert PAPER_PARAMETERS[domain] + extra == ORIGINAL_PARAMETERS[domain]


def test_paper_structure():
    """Attention at the four lowest levels and the mid block: 21 blocks, 8 heads each."""
    model = _meta_unet("paper", 64, 320, 1, 768, 1025)
    blocks = [m for m in model.modules() if isinstance(m, PositionalTransformerBlock)]
    assert len(blocks) == 4 * 2 + 1 + 4 * 3
    assert all(b.attn1.heads == 8 and b.attn2.heads == 8 for b in blocks)
    assert [len(level.resnets) for level in model.down_levels] == [2] * 6
    assert [len(level.resnets) for level in model.up_levels] == [3] * 6
    assert model.down_levels[0].attentions is None and model.down_levels[1].attentions is None
    assert model.time_embedding.linear_1.in_features == 128
    assert model.time_embedding.linear_2.out_features == 512
    # image-position tables follow the image size at each level: 64x320 -> 16x80 ... 2x10
    assert (
        model.down_levels[2].attentions[0].max_rows,
        model.down_levels[2].attentions[0].max_cols,
    ) == (16, 80)
    assert (model.mid_block.attention.max_rows, model.mid_block.attention.max_cols) == (2, 10)
    assert all(b.text_position_embedding.num_embeddings == 1025 for b in blocks)


@pytest.mark.slow
def test_paper_preset_runs_at_math_size():
    torch.manual_seed(0)
    model = MarkupUNet.from_preset(
        get_model_preset("paper"), height=64, width=320, channels=1, cross_attention_dim=768
    )
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 320), torch.tensor([500]), torch.randn(1, 7, 768))
    assert out.shape == (1, 1, 64, 320) and torch.isfinite(out).all()


@pytest.mark.parametrize("preset", CPU_PRESETS)
@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_cpu_presets_run_on_every_domain_size(preset, domain):
    spec = DOMAINS[domain]
    torch.manual_seed(0)
    model = MarkupUNet.from_preset(
        get_model_preset(preset),
        height=spec.height,
        width=spec.width,
        channels=spec.channels,
        cross_attention_dim=CTX,
        max_text_positions=33,
    )
    x = torch.randn(1, spec.channels, spec.height, spec.width)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        out = model(x, torch.tensor([10]), torch.randn(1, 8, CTX), mask)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_presets_keep_attention_off_full_resolution(preset):
    spec = DOMAINS["math"]
    model = _meta_unet(preset, spec.height, spec.width, 1, CTX, 33)
    blocks = [m for m in model.modules() if isinstance(m, PositionalTransformerBlock)]
    assert blocks, "a conditional UNet needs cross-attention somewhere"
    for block in blocks:
        assert block.max_rows <= spec.height // 4 and block.max_cols <= spec.width // 4
    assert model.down_levels[0].attentions is None and model.up_levels[-1].attentions is None


def test_cpu_preset_sizes():
    """With the offline encoder's width and the presets' default markup lengths."""
    sizes = {}
    for name in CPU_PRESETS:
        preset = get_model_preset(name)
        sizes[name] = _count(_meta_unet(name, 64, 64, 1, CTX, preset.max_markup_length + 1))
    assert 200_000 <= sizes["tiny"] <= 500_000
    assert 1_500_000 <= sizes["small"] <= 3_000_000


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_image_sizes_that_do_not_downsample_evenly_are_refused(preset):
    p = get_model_preset(preset)
    f = p.downsample_factor
    for domain in DOMAINS.values():
        p.check_image_size(domain.height, domain.width)
    with pytest.raises(ConfigError, match=f"multiples of {f}"):
        p.check_image_size(64 + f // 2, 64)
    with pytest.raises(ConfigError, match=preset):
        MarkupUNet.from_preset(p, height=64, width=64 + f // 2, channels=1, cross_attention_dim=8)


def test_unknown_preset_lists_known_names():
    with pytest.raises(ConfigError, match="paper.*small.*tiny"):
        get_model_preset("huge")


def _block(seed: int = 0) -> PositionalTransformerBlock:
    torch.manual_seed(seed)
    block = PositionalTransformerBlock(
        32,
        num_heads=4,
        cross_attention_dim=CTX,
        max_rows=6,
        max_cols=10,
        max_text_positions=20,
        norm_num_groups=8,
    )
    with torch.no_grad():  # make the learned tables clearly non-trivial
        for table in (block.row_embedding, block.col_embedding, block.text_position_embedding):
            table.weight.normal_()
    return block.eval()


def test_image_position_layout_rows_then_columns():
    block = _block()
    pos = block.image_positions(4, 7)
    half = block.row_channels
    assert pos.shape == (32, 4, 7)
    assert torch.equal(pos[:half], pos[:half, :, :1].expand(-1, -1, 7))  # varies by row only
    assert torch.equal(pos[half:], pos[half:, :1, :].expand(-1, 4, -1))  # varies by column only
    assert torch.equal(pos[:half, 2, 5], block.row_embedding.weight[2])
    assert torch.equal(pos[half:, 2, 5], block.col_embedding.weight[5])
    with pytest.raises(ValueError, match="exceeds"):
        block.image_positions(7, 7)


def test_image_position_embedding_changes_the_output():
    """A spatially constant input gives a constant output unless image positions are added."""
    block = _block()
    x = torch.ones(2, 32, 4, 6) * torch.randn(2, 32, 1, 1)
    ctx = torch.randn(2, 5, CTX)
    with torch.no_grad():
        out = block(x, ctx)
        rows_vary = (out - out[:, :, :1, :]).abs().amax()
        cols_vary = (out - out[:, :, :, :1]).abs().amax()
        block.row_embedding.weight.zero_()
        block.col_embedding.weight.zero_()
        flat = block(x, ctx)
    assert rows_vary > 1e-3 and cols_vary > 1e-3
    assert (flat - flat[:, :, :1, :1]).abs().amax() < 1e-5


def test_text_position_embedding_makes_token_order_matter():
    block = _block()
    x = torch.randn(1, 32, 4, 6)
    ctx = torch.randn(1, 5, CTX)
    flipped = ctx.flip(1)
    with torch.no_grad():
        assert (block(x, ctx) - block(x, flipped)).abs().max() > 1e-3
        block.text_position_embedding.weight.zero_()
        # without text positions, cross-attention is blind to the order of the keys
        assert (block(x, ctx) - block(x, flipped)).abs().max() < 1e-5


def test_masked_keys_are_ignored_per_example():
    """What sits at masked positions, and the other examples' masks, do not change an output."""
    block = _block()
    x = torch.randn(3, 32, 4, 6)
    ctx = torch.randn(3, 9, CTX)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, n in enumerate([2, 9, 5]):
        mask[i, :n] = True
    with torch.no_grad():
        out = block(x, ctx, mask)
        noisy = torch.where(mask[..., None], ctx, torch.randn_like(ctx) * 100)
        assert (block(x, noisy, mask) - out).abs().max() < 1e-5
        for i, n in enumerate([2, 9, 5]):
            alone = block(x[i : i + 1], ctx[i : i + 1, :n], mask[i : i + 1, :n])
            assert (alone - out[i : i + 1]).abs().max() < 1e-5
        # and the mask matters: unmasking the padding changes example 0
        assert (block(x, noisy) - out)[0].abs().max() > 1e-3


def test_denoiser_accepts_scalar_timestep_and_int_mask():
    spec = DOMAINS["tables"]
    torch.manual_seed(0)
    model = MarkupUNet.from_preset(
        get_model_preset("tiny"),
        height=spec.height,
        width=spec.width,
        channels=1,
        cross_attention_dim=CTX,
        max_text_positions=9,
    ).eval()
    x = torch.randn(2, 1, 64, 64)
    ctx = torch.randn(2, 4, CTX)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        a = model(x, 7, ctx, mask)
        b = model(x, torch.tensor([7, 7]), ctx, mask.bool())
        c = model(x, torch.tensor(7), ctx, mask)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_channels_last_features_stay_channels_last_and_outputs_match():
    """A channels-last (NHWC) UNet gives the same output; its attention blocks keep NHWC."""
    torch.manual_seed(0)
    model = MarkupUNet.from_preset(
        get_model_preset("tiny"), height=32, width=64, channels=1, cross_attention_dim=CTX,
        max_text_positions=9,
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 32, 64)
    ctx, t = torch.randn(2, 4, CTX), torch.tensor([3, 900])
    with torch.no_grad():
        plain = model(x, t, ctx)
        model.to(memory_format=torch.channels_last)
        nhwc_in = x.contiguous(memory_format=torch.channels_last)
        nhwc = model(nhwc_in, t, ctx)
        block = model.down_levels[-1].attentions[0]
        features = torch.randn(2, 32, 4, 8).contiguous(memory_format=torch.channels_last)
        out = block(features, ctx)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert block(features.contiguous(), ctx).is_contiguous()
    assert (plain - nhwc).abs().max() <= 1e-4


@pytest.mark.parametrize("preset", [p for p in CPU_PRESETS if get_model_preset(p).patch_size > 1])
def test_patched_presets_run_no_level_at_full_resolution(preset, tmp_path):
    """On 2x2 patches the first level works at half the image side, the output is the image's
    shape, and the patch size is saved and reloaded with the denoiser."""
    p = get_model_preset(preset)
    assert p.level_factors[0] == p.patch_size == 2
    assert [s for s in p.level_sizes(32, 128)][0] == (16, 64)
    torch.manual_seed(0)
    model = MarkupUNet.from_preset(p, height=32, width=128, channels=1, cross_attention_dim=CTX,
                                   max_text_positions=33)  # fmt: skip
    seen = []
    model.conv_in.register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape)))
    x = torch.randn(2, 1, 32, 128)
    ctx, mask = torch.randn(2, 5, CTX), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 900]), ctx, mask)
    assert out.shape == x.shape and seen == [(2, p.block_out_channels[0], 16, 64)]
    model.save_pretrained(tmp_path / "unet")
    loaded = MarkupUNet.from_pretrained(tmp_path / "unet")
    assert loaded.config.patch_size == 2 and loaded.patch_size == 2
    with torch.no_grad():
        again = loaded(x, torch.tensor([10, 900]), ctx, mask)
    assert torch.allclose(out, again, atol=1e-5)
