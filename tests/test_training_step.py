"""Tests of the pieces of a training step: markup encoding, its cache and padding, the
optimizer options, the step's draws and the learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import (
    assert_same_weights,
    dataset_fixture,  # noqa: F401
    model_weights,
    tiny,
)

from markup2im.errors import ConfigError
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_worker_tokens_encode_as_the_model_does(tmp_path: Path) -> None:
    from markup2im.model import Markup2ImModel
    from markup2im.training.step import encode_tokens

    model = Markup2ImModel.from_config(model_preset="tiny", encoder="offline", height=64,
                                       width=64, channels=1, max_markup_length=16)  # fmt: skip
    markups = ["<td>1</td>", "x" * 40, ""]
    hidden, mask = model.encode(markups)
    ids, token_mask = model.encoder.tokenize(markups)
    again, again_mask = encode_tokens(model.encoder, ids, token_mask)
    assert torch.equal(hidden, again) and torch.equal(mask, again_mask)


def test_encoder_cache_encodes_each_example_once(tmp_path: Path) -> None:
    from markup2im.model import Markup2ImModel
    from markup2im.training.data import Batch
    from markup2im.training.step import EncoderCache, encode_tokens

    model = Markup2ImModel.from_config(model_preset="tiny", encoder="offline", height=64,
                                       width=64, channels=1, max_markup_length=32)  # fmt: skip
    markups = ["<td>1</td>", "a much longer piece of markup", "x", "<tr></tr>"]

    def batch(indices: list[int]) -> Batch:
        ids, mask = model.encoder.tokenize([markups[i] for i in indices])
        return Batch(indices, [markups[i] for i in indices], torch.zeros(len(indices)), ids, mask)

    cache = EncoderCache(lambda ids, mask: encode_tokens(model.encoder, ids, mask))
    for indices in ([0, 1], [2, 0], [3, 1, 2, 0]):
        hidden, mask = cache(batch(indices))
        want, want_mask = model.encode([markups[i] for i in indices])
        assert torch.equal(mask, want_mask) and hidden.shape == want.shape
        torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-6)
    assert cache.encoded == 4  # each example once


def test_cache_encoder_trains_about_the_same_model(tmp_path: Path, dataset_dir: Path) -> None:
    settings = dict(max_steps=None, epochs=2, checkpoint_every=100)
    train(tiny(dataset_dir, tmp_path / "a", **settings))
    train(tiny(dataset_dir, tmp_path / "b", cache_encoder=True, **settings))
    a, b = model_weights(tmp_path / "a" / "model"), model_weights(tmp_path / "b" / "model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    with pytest.raises(ConfigError, match="cache_encoder"):
        train(tiny(dataset_dir, tmp_path / "c", cache_encoder=True, train_encoder=True))


def test_markup_buckets_pad_to_a_few_lengths() -> None:
    from markup2im.training.step import bucket_length, markup_buckets

    assert markup_buckets(1025) == (32, 64, 128, 256, 512, 1025)  # paper: 1024 tokens + end
    assert markup_buckets(65) == (32, 65)
    assert markup_buckets(20) == (20,)
    assert [bucket_length(n, 1025) for n in (1, 32, 33, 100, 513, 1025)] == [
        32, 32, 64, 128, 1025, 1025,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="longer than the limit"):
        bucket_length(1026, 1025)


def test_padded_markup_gives_the_unpadded_output_and_padding_is_masked() -> None:
    from markup2im.models.denoiser import MarkupUNet
    from markup2im.presets import get_model_preset
    from markup2im.training.step import pad_markup

    torch.manual_seed(0)
    denoiser = MarkupUNet.from_preset(get_model_preset("tiny"), height=64, width=64, channels=1,
                                      cross_attention_dim=16, max_text_positions=65).eval()  # fmt: skip
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([10, 900])
    hidden = torch.randn(2, 7, 16)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    hidden = hidden * mask[..., None]
    with torch.no_grad():
        plain = denoiser(x, t, hidden, mask)
        padded_hidden, padded_mask = pad_markup(hidden, mask, 32)
        assert padded_hidden.shape == (2, 32, 16) and padded_mask.shape == (2, 32)
        assert not padded_mask[:, 7:].any() and torch.equal(padded_hidden[:, :7], hidden)
        padded = denoiser(x, t, padded_hidden, padded_mask)
        # garbage where the mask is False changes nothing: the mask is respected
        garbage = padded_hidden.clone()
        garbage[~padded_mask] = 1e3
        masked = denoiser(x, t, garbage, padded_mask)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(masked, plain, rtol=1e-4, atol=1e-5)
    assert pad_markup(hidden, mask, 7)[0] is hidden


def test_fused_adamw_only_where_every_parameter_is_on_a_gpu() -> None:
    from markup2im.training.step import adamw_options

    assert adamw_options([torch.nn.Parameter(torch.zeros(2))]) == {}
    assert adamw_options([]) == {}


def test_step_draws_equal_prepare_step_on_cpu_and_use_the_noise_generator() -> None:
    from markup2im.diffusion import NoiseSchedule
    from markup2im.model import DEFAULT_SCHEDULER_CONFIG
    from markup2im.scheduled_sampling import (
        ScheduledSamplingConfig,
        draw_timesteps_and_m,
        prepare_step,
    )
    from markup2im.training.methods.scheduled_sampling import draw_step
    from markup2im.training.step import noise_generator

    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    config = ScheduledSamplingConfig(max_m=2, start=(0.5, 0.5), end=(0.5, 0.5))
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    weight = torch.randn(1)

    def eps_model(x, t):
        return x * weight + t.float()[:, None, None, None] / 1000

    for seed in range(6):
        a = prepare_step(eps_model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed))
        b = draw_step(eps_model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed))
        assert a.m == b.m and torch.equal(a.timesteps, b.timesteps)
        assert torch.equal(a.x_t, b.x_t) and torch.equal(a.target, b.target)
        # a separate noise generator (the CUDA path): the same t and m, its own noise
        c = draw_step(
            eps_model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed),
            torch.Generator().manual_seed(1000 + seed),
        )  # fmt: skip
        t, m = draw_timesteps_and_m(config, 0.5, 3, 1000, torch.Generator().manual_seed(seed))
        assert c.m == m and torch.equal(c.timesteps, t)
        assert not torch.equal(c.x_t, a.x_t)
    assert noise_generator(1, torch.device("cpu")) is None


def original_lrs(warmup: int, total: int, processes: int) -> list[float]:
    """The original's learning rates: a diffusers schedule of total x N steps, prepared by
    accelerate, which steps it N times per optimizer step."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total * processes)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        for _ in range(processes):
            scheduler.step()
    return lrs


def our_lrs(warmup: int, total: int, processes: int) -> list[float]:
    from markup2im.training.step import lr_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_schedule(optimizer, warmup, total, processes)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.step()
    return lrs


def test_warmup_per_process_is_the_original_schedule_on_n_processes() -> None:
    """Music on 4 GPUs: the original warmed up over 125 optimizer steps, ours over 500."""
    ours = our_lrs(500, 2000, 1)
    assert ours == original_lrs(500, 2000, 1)  # one process: the same schedule
    assert ours[500] == 1.0 and ours[499] < 1.0
    per_process = our_lrs(500, 2000, 4)
    np.testing.assert_allclose(per_process, original_lrs(500, 2000, 4), rtol=1e-12, atol=1e-15)
    assert per_process[125] == 1.0 and per_process[124] < 1.0
    assert per_process[-1] < 1e-5  # the cosine still ends at the end of training
    np.testing.assert_allclose(our_lrs(3, 10, 2), original_lrs(3, 10, 2), rtol=1e-12)


def test_warmup_per_process_changes_nothing_for_one_process(
    tmp_path: Path, dataset_dir: Path
) -> None:
    train(tiny(dataset_dir, tmp_path / "a", checkpoint_every=100))
    train(tiny(dataset_dir, tmp_path / "b", checkpoint_every=100, warmup_per_process=True))
    assert_same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
