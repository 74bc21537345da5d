"""Tests of markup2im.sampling: the samplers, per-example noise, frames and the speed options,
with an untrained tiny model (and the trained one for bf16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inference_helpers import save_untrained_model

from markup2im.errors import ConfigError
from markup2im.model import Markup2ImModel
from markup2im.names import DEFAULT_STEPS, SAMPLERS
from markup2im.sampling import (
    example_generators,
    example_seed,
    frame_steps,
    make_scheduler,
    num_steps,
    sample,
    use_channels_last,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Markup2ImModel:
    return Markup2ImModel.from_pretrained(model_dir, device="cpu").eval()


def test_ddpm_is_the_papers_sampler(model) -> None:
    scheduler = make_scheduler("ddpm", model.scheduler_config)
    assert len(scheduler.timesteps) == 1000
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    assert scheduler.config.clip_sample and scheduler.config.clip_sample_range == 1.0
    assert scheduler.config.variance_type == "fixed_small"
    assert len(make_scheduler("ddim", model.scheduler_config).timesteps) == 50
    assert len(make_scheduler("dpmsolver++", model.scheduler_config, 7).timesteps) == 7
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_scheduler("euler", model.scheduler_config)
    with pytest.raises(ConfigError, match="1..1000"):
        make_scheduler("ddim", model.scheduler_config, 5000)


def test_frame_steps() -> None:
    assert frame_steps(10, 4) == {0, 4, 8, 9}
    assert frame_steps(10, 0) == set()


def test_num_steps_is_the_samplers_default_or_the_given_count(model) -> None:
    config = model.scheduler_config
    assert [num_steps(s, config) for s in SAMPLERS] == [DEFAULT_STEPS[s] or 1000 for s in SAMPLERS]
    assert num_steps("ddim", config, 7) == 7
    with pytest.raises(ConfigError, match="unknown sampler"):
        num_steps("euler", config)


def test_each_example_has_its_own_noise_seed() -> None:
    """example_seed(seed, index) is the noise of example index under seed: the same pair gives
    the same seed whatever else is drawn, any other pair another one."""
    pairs = [(s, i) for s in (0, 1, 5) for i in range(4)]
    seeds = [example_seed(s, i) for s, i in pairs]
    assert len(set(seeds)) == len(pairs)
    assert example_seed(5, 2) == example_seed(5, 2)
    a = torch.randn(3, generator=example_generators(5, [0, 2])[1])
    b = torch.randn(3, generator=torch.Generator().manual_seed(example_seed(5, 2)))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_stay_bounded_and_follow_the_seed(model, sampler: str) -> None:
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    run = lambda seed: sample(  # noqa: E731
        model, markups, example_generators(seed, [0, 1]), sampler=sampler, num_inference_steps=6
    )
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (2, 1, 64, 64)
    assert torch.isfinite(a).all() and a.abs().max() <= 1 + 1e-5
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# -- speed options: bf16 autocast and channels-last ---------------------------------------------
# Measured on the trained tiny model (tests/tiny_model.py), 4 markups, CPU: bf16 against fp32
# differs by a mean of 0.001 and at most 0.009 on the [-1, 1] scale for every sampler; the
# tolerances below leave a 10x margin.
BF16_MEAN_TOLERANCE = 0.01
BF16_MAX_TOLERANCE = 0.1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bf16_sampling_stays_bounded_and_finite(model, sampler: str) -> None:
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    out = sample(model, markups, example_generators(1, [0, 1]), sampler=sampler,
                 num_inference_steps=6, precision="bf16")  # fmt: skip
    assert out.dtype == torch.float32 and out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bf16_sampling_is_close_to_fp32_on_a_trained_model(tiny_model_dir, sampler: str) -> None:
    trained = Markup2ImModel.from_pretrained(tiny_model_dir).eval()
    markups = ["x^2", "a+b=c", r"\frac{1}{2}", "y_1"]
    steps = 50 if sampler == "ddpm" else 10
    run = lambda precision: sample(  # noqa: E731
        trained, markups, example_generators(1, range(4)), sampler=sampler,
        num_inference_steps=steps, precision=precision,
    )  # fmt: skip
    fp32, bf16 = run("fp32"), run("bf16")
    difference = (fp32 - bf16).abs()
    assert difference.mean() <= BF16_MEAN_TOLERANCE
    assert difference.max() <= BF16_MAX_TOLERANCE
    assert not torch.equal(fp32, bf16)  # bf16 really ran


def test_channels_last_gives_the_same_images(model_dir) -> None:
    plain = Markup2ImModel.from_pretrained(model_dir).eval()
    nhwc = Markup2ImModel.from_pretrained(model_dir).eval()
    use_channels_last(nhwc)
    assert nhwc.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    a = sample(plain, markups, example_generators(3, [0, 1]), sampler="ddim", num_inference_steps=4)
    b = sample(nhwc, markups, example_generators(3, [0, 1]), sampler="ddim",
               num_inference_steps=4, channels_last=True)  # fmt: skip
    assert (a - b).abs().max() <= 1e-4
