"""Tests of markup2im.sampling: the samplers, per-example noise, frames, the speed options and
epsilon scaling, with an untrained tiny model (and the trained one for bf16; a toy model whose
output is known by hand for epsilon scaling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inference_helpers import ToyModel, save_untrained_model

from markup2im.diffusion import NoiseSchedule
from markup2im.eps_scaling import EpsScale
from markup2im.errors import ConfigError
from markup2im.model import Markup2ImModel
from markup2im.names import DEFAULT_STEPS, PREDICTION_TYPES, SAMPLERS
from markup2im.sampling import (
    check_eps_scale,
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


# -- epsilon scaling -----------------------------------------------------------------------------
TOY_MARKUPS = ["a", "b"]
LINEAR = EpsScale(k=2e-4, b=1.01)  # lambda_t from 1.01 (t = 0) to 1.21 (t = 999)


def toy_sample(model: ToyModel, sampler: str, eps_scale: EpsScale | None = None, steps=None):
    """The toy's samples of TOY_MARKUPS (ddpm: all 1000 steps unless ``steps``)."""
    steps = steps or (None if sampler == "ddpm" else 10)
    return sample(
        model, TOY_MARKUPS, example_generators(7, [0, 1]), sampler=sampler,
        num_inference_steps=steps, eps_scale=eps_scale,
    )  # fmt: skip


class HandScaled(ToyModel):
    """The toy with its output scaled by hand (float64): the noise it implies divided by
    lambda_t = k t + b of the training timestep t, the output rebuilt in its own type."""

    def __init__(self, prediction_type: str, eps_scale: EpsScale) -> None:
        super().__init__(prediction_type)
        self.eps_scale = eps_scale
        self.abar = NoiseSchedule.from_scheduler_config(self.scheduler_config).alphas_cumprod

    def __call__(self, sample, timesteps, encoder_hidden_states, encoder_attention_mask):
        x, t = sample.double(), timesteps
        out = self.output(x, t)
        abar = self.abar.double()[t].reshape(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        lam = (self.eps_scale.k * t.double() + self.eps_scale.b).reshape(-1, 1, 1, 1)
        kind = self.scheduler_config["prediction_type"]
        eps = {"epsilon": out, "sample": (x - a * out) / s, "v_prediction": a * out + s * x}[kind]
        eps = eps / lam
        x0 = (x - s * eps) / a
        scaled = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[kind]
        return scaled.float()


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_eps_scale_1_is_the_plain_sampler_bit_for_bit(sampler: str, kind: str) -> None:
    plain = toy_sample(ToyModel(kind), sampler)
    for identity in (EpsScale(), EpsScale.parse(1), EpsScale.parse({"k": 0, "b": 1})):
        assert torch.equal(toy_sample(ToyModel(kind), sampler, identity), plain)


def test_eps_scale_1_is_the_plain_sampler_on_a_real_model(model) -> None:
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    run = lambda scale: sample(  # noqa: E731
        model, markups, example_generators(3, [0, 1]), sampler="ddim", num_inference_steps=3,
        eps_scale=scale,
    )  # fmt: skip
    plain = run(None)
    assert torch.equal(run(EpsScale.parse("1")), plain)
    assert not torch.equal(run(EpsScale(b=1.05)), plain)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_eps_scale_rescales_every_steps_output(sampler: str, kind: str) -> None:
    """Sampling with eps_scale draws what the plain sampler draws from a model whose output was
    scaled by hand at each step's training timestep; and that is not the plain image."""
    scaled = toy_sample(ToyModel(kind), sampler, LINEAR)
    by_hand = toy_sample(HandScaled(kind, LINEAR), sampler)
    plain = toy_sample(ToyModel(kind), sampler)
    assert (scaled - by_hand).abs().max() <= 1e-5
    assert (scaled - plain).abs().mean() >= 1e-3  # a sampler that ignores the scale fails here


def _ddim_by_hand(toy: ToyModel, x: torch.Tensor, lam) -> torch.Tensor:
    """Two DDIM steps (t = 500, then 0) of an epsilon model in float64, each step's noise
    divided by ``lam(t)``."""
    abar = NoiseSchedule.from_scheduler_config(toy.scheduler_config).alphas_cumprod.double()
    x = x.double()
    for t, abar_prev in ((500, abar[0]), (0, torch.tensor(1.0, dtype=torch.float64))):
        eps = toy.output(x, torch.full((len(x),), t)) / lam(t)
        x0 = ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
        x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
    return x


def test_ddim_with_eps_scale_by_hand() -> None:
    """sample() with the linear form is DDIM by hand with lambda_t at the training timestep t
    (500, then 0), not at the step's index or a constant."""
    toy = ToyModel("epsilon")
    got = toy_sample(toy, "ddim", LINEAR, steps=2).double()
    assert [int(t[0]) for _, t in toy.calls] == [500, 0]
    noise = toy.calls[0][0]
    assert (got - _ddim_by_hand(toy, noise, LINEAR.at)).abs().max() <= 1e-5
    for wrong in (lambda t: LINEAR.b, lambda t: 1.0, lambda t: LINEAR.at(2 * (t > 0))):
        assert (got - _ddim_by_hand(toy, noise, wrong)).abs().max() > 1e-3


def test_frames_show_the_scaled_prediction() -> None:
    frames: dict[int, torch.Tensor] = {}
    toy = ToyModel("epsilon")
    sample(
        toy, TOY_MARKUPS[:1], example_generators(7, [0]), sampler="ddim", num_inference_steps=2,
        eps_scale=LINEAR, frames_every=1, on_frame=lambda k, step, x0: frames.update({step: x0}),
    )  # fmt: skip
    schedule = NoiseSchedule.from_scheduler_config(toy.scheduler_config)
    for step, (x, t) in enumerate(toy.calls):
        eps = toy.output(x, t) / LINEAR.at(int(t[0]))
        want = schedule.x0_from_eps(x, eps, t).clamp(-1, 1)
        torch.testing.assert_close(frames[step], want[0], atol=1e-5, rtol=0)


def test_lambda_must_stay_positive_at_every_timestep_of_the_sampler() -> None:
    """EpsScale checks t < 1000; a schedule of more training timesteps is checked here."""
    shrinking = EpsScale(k=-9e-4, b=1.0)  # 0.1009 at t = 999, negative beyond 1111
    assert check_eps_scale(shrinking, torch.tensor([999, 0])) is shrinking
    assert check_eps_scale(EpsScale(), torch.tensor([5])) is None
    assert check_eps_scale(None, torch.tensor([5])) is None
    with pytest.raises(ConfigError, match=r"eps_scale: lambda_t = -0.0009 t \+ 1 must be > 0"):
        toy_sample(ToyModel("epsilon", num_train_timesteps=2000), "ddim", shrinking)
