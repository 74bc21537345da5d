"""Tests of the scheduled-sampling formulas (DESIGN section 6) with a small deterministic model.

The formula is what is under test, so a tiny eps-model built here stands in for the denoiser.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from markup2im.diffusion import NoiseSchedule
from markup2im.errors import ConfigError
from markup2im.scheduled_sampling import (
    ScheduledSamplingConfig,
    build_inputs,
    clamp_m,
    draw_m,
    prepare_step,
    step_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyEps(torch.nn.Module):
    """eps(x, t) = conv(x) + w * t / T: deterministic, depends on both inputs, has parameters."""

    def __init__(self, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.T = num_train_timesteps
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert int(t.max()) <= self.T - 1 and int(t.min()) >= 0, "timestep outside the schedule"
        self.calls.append(t.clone())
        return self.conv(x) + self.w * (t.float() / self.T).reshape(-1, 1, 1, 1)


def schedule_of(T: int = 1000) -> NoiseSchedule:
    config = DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    ).config
    return NoiseSchedule.from_scheduler_config(config)


def gold(batch: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 6, 7, generator=gen) * 2 - 1


def test_ramp_weights_at_start_middle_end() -> None:
    config = ScheduledSamplingConfig(max_m=2, start=(0.1, 0.0), end=(0.5, 0.3))
    assert config.weights(0.0) == pytest.approx((0.9, 0.1, 0.0))
    assert config.weights(0.5) == pytest.approx((0.55, 0.3, 0.15))
    assert config.weights(1.0) == pytest.approx((0.2, 0.5, 0.3))
    assert config.probability(0.5) == pytest.approx(0.45)
    paper = ScheduledSamplingConfig.from_settings()
    assert paper.weights(0.0) == pytest.approx((1.0, 0.0))
    assert paper.weights(0.5) == pytest.approx((0.6, 0.4))
    assert paper.weights(1.0) == pytest.approx((0.2, 0.8))
    baseline = ScheduledSamplingConfig.baseline()
    assert baseline.weights(1.0) == (1.0, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_m": 2, "start": (0.0,), "end": (0.5, 0.5)},
        {"max_m": 1, "start": (0.0,), "end": (1.2,)},
        {"max_m": 2, "start": (0.0, 0.0), "end": (0.7, 0.7)},
        {"max_m": 0, "start": (), "end": ()},
    ],
)
def test_invalid_weights_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="scheduled sampling"):
        ScheduledSamplingConfig(**kwargs)


def test_draw_m_follows_weights() -> None:
    gen = torch.Generator().manual_seed(3)
    weights = (0.2, 0.5, 0.3)
    counts = np.bincount([draw_m(weights, gen) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, weights, atol=0.03)


def test_m0_loss_equals_baseline_loss_on_same_noise() -> None:
    schedule, model, x0 = schedule_of(), TinyEps(), gold()
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    inputs = build_inputs(model, schedule, x0, t, 0, noise)
    abar = torch.from_numpy(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t.numpy()]).reshape(
        -1, 1, 1, 1
    )
    x_t = (abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()).float()
    baseline = F.mse_loss(model(x_t, t), noise)
    torch.testing.assert_close(step_loss(model, inputs), baseline, atol=1e-6, rtol=1e-5)
    assert len(model.calls) == 2  # no rollout call for m = 0

    # At p = 0 scheduled sampling (weight 0 for m = 1) is the baseline, draw for draw.
    ss = ScheduledSamplingConfig.from_settings()
    base = ScheduledSamplingConfig.baseline()
    for seed in range(5):
        a = prepare_step(model, schedule, ss, x0, 0.0, torch.Generator().manual_seed(seed))
        b = prepare_step(model, schedule, base, x0, 0.7, torch.Generator().manual_seed(seed))
        assert a.m == b.m == 0
        assert torch.equal(step_loss(model, a), step_loss(model, b))


def test_m1_target_matches_hand_computation() -> None:
    schedule, model, x0 = schedule_of(), TinyEps(), gold()
    gen = torch.Generator().manual_seed(7)
    t = torch.tensor([0, 17, 400, 998])
    noise = torch.randn(x0.shape, generator=gen)
    fresh = torch.randn(x0.shape, generator=gen)
    inputs = build_inputs(model, schedule, x0, t, 1, noise, [fresh])

    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    a_hi = torch.from_numpy(abar[(t + 1).numpy()]).reshape(-1, 1, 1, 1)
    a_t = torch.from_numpy(abar[t.numpy()]).reshape(-1, 1, 1, 1)
    x0d, noised, freshd = x0.double(), noise.double(), fresh.double()
    x_hi = a_hi.sqrt() * x0d + (1 - a_hi).sqrt() * noised
    with torch.no_grad():
        eps_hat = model.double()(x_hi, t + 1)
    x0_hat = (x_hi - (1 - a_hi).sqrt() * eps_hat) / a_hi.sqrt()
    x_t = a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * freshd
    target = (x_t - a_t.sqrt() * x0d) / (1 - a_t).sqrt()

    assert inputs.m == 1
    np.testing.assert_allclose(inputs.x_t.double().numpy(), x_t.numpy(), atol=1e-5)
    # the t = 0 example amplifies float32 rounding by sqrt(abar_0 / (1 - abar_0)) ~ 100
    np.testing.assert_allclose(inputs.target.double().numpy(), target.numpy(), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(
        inputs.target[1:].double().numpy(), target[1:].numpy(), rtol=1e-5, atol=1e-5
    )
    # the rollout target differs from the injected noise
    assert not torch.allclose(inputs.target, fresh, atol=1e-3)


def test_no_gradient_reaches_the_rollout() -> None:
    schedule, x0 = schedule_of(), gold()
    config = ScheduledSamplingConfig(max_m=2, start=(0.0, 1.0), end=(0.0, 1.0))
    model = TinyEps()
    inputs = prepare_step(model, schedule, config, x0, 0.3, torch.Generator().manual_seed(11))
    assert inputs.m == 2
    assert not inputs.x_t.requires_grad and not inputs.target.requires_grad
    step_loss(model, inputs).backward()
    grads = [p.grad.clone() for p in model.parameters()]

    # The same loss on the same (detached) inputs, with no rollout in the graph at all.
    fresh_model = TinyEps()
    loss = F.mse_loss(fresh_model(inputs.x_t.clone(), inputs.timesteps), inputs.target.clone())
    loss.backward()
    for got, want in zip(grads, [p.grad for p in fresh_model.parameters()], strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_t_plus_m_never_exceeds_last_step() -> None:
    T = 10
    schedule, model, x0 = schedule_of(T), TinyEps(T), gold(batch=3)
    config = ScheduledSamplingConfig(max_m=3, start=(0.0, 0.0, 1.0), end=(0.0, 0.0, 1.0))
    seen = set()
    for seed in range(300):
        inputs = prepare_step(model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed))
        t_max = int(inputs.timesteps.max())
        assert t_max + inputs.m <= T - 1
        assert inputs.m == min(3, T - 1 - t_max)  # decreased only as far as needed
        seen.add(inputs.m)
    assert seen == {0, 1, 2, 3}
    assert clamp_m(3, torch.tensor([2, 9]), T) == 0
    assert clamp_m(3, torch.tensor([2, 6]), T) == 3


def test_guard_skips_rollouts_that_end_at_small_t() -> None:
    schedule, model, x0 = schedule_of(), TinyEps(), gold(batch=2)
    always = ScheduledSamplingConfig(max_m=1, start=(1.0,), end=(1.0,))
    guarded = ScheduledSamplingConfig(max_m=1, start=(1.0,), end=(1.0,), min_t=999)
    for seed in range(10):
        gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        a = prepare_step(model, schedule, always, x0, 0.0, gen_a)
        b = prepare_step(model, schedule, guarded, x0, 0.0, gen_b)
        assert a.m == 1 and b.m == 0
        assert torch.equal(a.timesteps, b.timesteps)


def test_same_generator_state_gives_same_step() -> None:
    schedule, model, x0 = schedule_of(), TinyEps(), gold()
    config = ScheduledSamplingConfig(max_m=1, start=(0.5,), end=(0.5,))
    a = prepare_step(model, schedule, config, x0, 0.1, torch.Generator().manual_seed(2))
    b = prepare_step(model, schedule, config, x0, 0.1, torch.Generator().manual_seed(2))
    assert a.m == b.m and torch.equal(a.x_t, b.x_t) and torch.equal(a.target, b.target)


# ---- every prediction type (epsilon, v, x0) ---------------------------------------------------

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def typed_schedule(prediction_type: str) -> NoiseSchedule:
    config = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction_type,
    ).config
    return NoiseSchedule.from_scheduler_config(config)


def hand_target(kind: str, x_t, x0, abar):
    """The training target of (x_t, x0) at abar, in float64, by the textbook formulas."""
    eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0
    return x0


def hand_x0(kind: str, x_t, output, abar):
    if kind == "epsilon":
        return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
    if kind == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * output
    return output


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_m0_is_the_baseline_step_for_every_prediction_type(kind: str) -> None:
    schedule, model, x0 = typed_schedule(kind), TinyEps(), gold()
    assert schedule.prediction_type == kind
    gen = torch.Generator().manual_seed(5)
    t = torch.tensor([0, 250, 600, 999])
    noise = torch.randn(x0.shape, generator=gen)
    inputs = build_inputs(model, schedule, x0, t, 0, noise)
    abar = torch.from_numpy(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t.numpy()]).reshape(
        -1, 1, 1, 1
    )
    x_t = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    want = {
        "epsilon": noise.double(),
        "v_prediction": abar.sqrt() * noise.double() - (1 - abar).sqrt() * x0.double(),
        "sample": x0.double(),
    }[kind]
    np.testing.assert_allclose(inputs.x_t.double().numpy(), x_t.numpy(), atol=1e-5)
    np.testing.assert_allclose(inputs.target.double().numpy(), want.numpy(), atol=1e-5)
    baseline = F.mse_loss(model(x_t.float(), t), want.float())
    torch.testing.assert_close(step_loss(model, inputs), baseline, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_m1_rollout_matches_hand_computation_for_every_prediction_type(kind: str) -> None:
    schedule, model, x0 = typed_schedule(kind), TinyEps(), gold()
    gen = torch.Generator().manual_seed(7)
    t = torch.tensor([3, 17, 400, 998])
    noise = torch.randn(x0.shape, generator=gen)
    fresh = torch.randn(x0.shape, generator=gen)
    inputs = build_inputs(model, schedule, x0, t, 1, noise, [fresh])

    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    a_hi = torch.from_numpy(abar[(t + 1).numpy()]).reshape(-1, 1, 1, 1)
    a_t = torch.from_numpy(abar[t.numpy()]).reshape(-1, 1, 1, 1)
    x0d = x0.double()
    x_hi = a_hi.sqrt() * x0d + (1 - a_hi).sqrt() * noise.double()
    with torch.no_grad():
        output = model.double()(x_hi, t + 1)
    x_t = a_t.sqrt() * hand_x0(kind, x_hi, output, a_hi) + (1 - a_t).sqrt() * fresh.double()
    target = hand_target(kind, x_t, x0d, a_t)

    assert inputs.m == 1
    np.testing.assert_allclose(inputs.x_t.double().numpy(), x_t.numpy(), atol=1e-5)
    np.testing.assert_allclose(inputs.target.double().numpy(), target.numpy(), rtol=1e-4, atol=2e-4)
    # the rollout changes the target: it is not the one of the plain noised image
    plain = build_inputs(model, schedule, x0, t, 0, fresh)
    if kind != "sample":  # an x0 target is the gold image whatever the input
        assert not torch.allclose(inputs.target, plain.target, atol=1e-3)
    assert not torch.allclose(inputs.x_t, plain.x_t, atol=1e-3)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_no_gradient_reaches_the_rollout_for_every_prediction_type(kind: str) -> None:
    schedule, x0 = typed_schedule(kind), gold()
    config = ScheduledSamplingConfig(max_m=1, start=(1.0,), end=(1.0,))
    model = TinyEps()
    inputs = prepare_step(model, schedule, config, x0, 0.3, torch.Generator().manual_seed(11))
    assert inputs.m == 1
    assert not inputs.x_t.requires_grad and not inputs.target.requires_grad
    step_loss(model, inputs).backward()
    fresh_model = TinyEps()
    F.mse_loss(fresh_model(inputs.x_t.clone(), inputs.timesteps), inputs.target).backward()
    for got, want in zip(model.parameters(), fresh_model.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=0, rtol=0)


def test_replayed_m_is_the_m_of_the_step() -> None:
    from markup2im.scheduled_sampling import draw_timesteps_and_m

    schedule, model, x0 = schedule_of(), TinyEps(), gold()
    config = ScheduledSamplingConfig(max_m=2, start=(0.2, 0.1), end=(0.5, 0.4))
    seen = []
    for seed in range(40):
        step = prepare_step(model, schedule, config, x0, 0.5, torch.Generator().manual_seed(seed))
        t, m = draw_timesteps_and_m(config, 0.5, 4, 1000, torch.Generator().manual_seed(seed))
        assert m == step.m and torch.equal(t, step.timesteps)
        seen.append(m)
    assert set(seen) == {0, 1, 2}


def test_weighted_loss_weighs_each_example() -> None:
    schedule, model, x0 = schedule_of(), TinyEps(), gold()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    inputs = build_inputs(model, schedule, x0, torch.tensor([5, 50, 500, 900]), 0, noise)
    per_example = (model(inputs.x_t, inputs.timesteps) - inputs.target).pow(2).mean((1, 2, 3))
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5])
    torch.testing.assert_close(
        step_loss(model, inputs, weights), (per_example * weights).mean(), atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(
        step_loss(model, inputs, torch.ones(4)), step_loss(model, inputs), atol=1e-6, rtol=1e-5
    )


def test_min_t_zero_means_no_guard() -> None:
    assert ScheduledSamplingConfig.from_settings(min_t=0).min_t is None
    assert ScheduledSamplingConfig.from_settings(min_t=50).min_t == 50
    schedule, model, x0 = schedule_of(), TinyEps(), gold(batch=16)
    config = ScheduledSamplingConfig.from_settings(start=(1.0,), end=(1.0,), min_t=0)
    # a seed whose batch holds a t = 0: the rollout still happens
    for seed in range(2000):
        t = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(seed))
        if int(t.min()) == 0 and int(t.max()) < 999:
            break
    step = prepare_step(model, schedule, config, x0, 0.0, torch.Generator().manual_seed(seed))
    assert int(step.timesteps.min()) == 0 and step.m == 1


def test_rollout_bound_uses_the_callers_t_max_without_reading_the_timesteps() -> None:
    """The trainer passes the largest t of its CPU draw, so the check needs no GPU read-back."""
    schedule, model, x0 = schedule_of(), TinyEps(), gold()
    t = torch.tensor([0, 17, 400, 998])
    noise = torch.zeros_like(x0)
    with pytest.raises(ValueError, match="rollout of 1 steps from t = 999 leaves the schedule"):
        build_inputs(model, schedule, x0, t, 1, noise, [noise], t_max=999)
    same = build_inputs(model, schedule, x0, t, 1, noise, [noise], t_max=998)
    assert torch.equal(same.x_t, build_inputs(model, schedule, x0, t, 1, noise, [noise]).x_t)
    with pytest.raises(ValueError, match="from t = 999"):  # without t_max: read from t
        build_inputs(model, schedule, x0, torch.tensor([999]), 1, noise[:1], [noise[:1]])
