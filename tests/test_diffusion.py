"""Tests of the noise-schedule arithmetic against hand computations in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from markup2im.diffusion import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


def paper_config() -> dict:
    """The paper's schedule: 1000 steps, linear betas 1e-4..0.02, epsilon prediction."""
    return dict(
        DDPMScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
        ).config
    )


def hand_abar() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def test_alphas_cumprod_match_linear_betas() -> None:
    schedule = NoiseSchedule.from_scheduler_config(paper_config())
    assert schedule.num_train_timesteps == 1000
    np.testing.assert_allclose(schedule.alphas_cumprod.double().numpy(), hand_abar(), rtol=2e-6)


def test_q_sample_x0_and_eps_formulas() -> None:
    schedule = NoiseSchedule.from_scheduler_config(paper_config())
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 5, generator=gen) * 2 - 1
    noise = torch.randn(3, 1, 4, 5, generator=gen)
    t = torch.tensor([0, 500, 999])
    x_t = schedule.q_sample(x0, noise, t)
    abar = torch.from_numpy(hand_abar()[t.numpy()]).reshape(-1, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    np.testing.assert_allclose(x_t.double().numpy(), expected.numpy(), atol=1e-5)
    # the closed forms invert each other
    torch.testing.assert_close(schedule.x0_from_eps(x_t, noise, t), x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(schedule.eps_from_x0(x_t, x0, t), noise, atol=1e-4, rtol=0)


def test_matches_diffusers_add_noise() -> None:
    scheduler = DDPMScheduler.from_config(paper_config())
    schedule = NoiseSchedule.from_scheduler(scheduler)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 8, 8, generator=gen)
    noise = torch.randn(2, 3, 8, 8, generator=gen)
    t = torch.tensor([10, 700])
    torch.testing.assert_close(
        schedule.q_sample(x0, noise, t), scheduler.add_noise(x0, noise, t), atol=1e-6, rtol=0
    )


def test_keeps_dtype_and_rejects_bad_timesteps() -> None:
    schedule = NoiseSchedule.from_scheduler_config(paper_config())
    x0 = torch.zeros(2, 1, 2, 2, dtype=torch.bfloat16)
    assert schedule.q_sample(x0, torch.ones_like(x0), torch.tensor([1, 2])).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="batch of 2"):
        schedule.q_sample(x0, x0, torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_output_parameterisations_invert_each_other(kind: str) -> None:
    config = {**paper_config(), "prediction_type": kind}
    schedule = NoiseSchedule.from_scheduler_config(config)
    assert schedule.prediction_type == kind
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 1, 4, 5, generator=gen) * 2 - 1
    noise = torch.randn(3, 1, 4, 5, generator=gen)
    t = torch.tensor([1, 500, 990])
    x_t = schedule.q_sample(x0, noise, t)
    target = schedule.target_from_noise(x0, noise, t)
    torch.testing.assert_close(schedule.target(x_t, x0, t), target, atol=2e-4, rtol=0)
    torch.testing.assert_close(schedule.x0_from_output(x_t, target, t), x0, atol=2e-4, rtol=0)
    if kind == "v_prediction":  # diffusers' own definition of v
        scheduler = DDPMScheduler.from_config(config)
        torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, t), atol=1e-5, rtol=0)


def test_min_snr_weights_cap_the_signal_to_noise_ratio() -> None:
    abar = torch.from_numpy(hand_abar())
    t = torch.tensor([0, 300, 999])
    snr = (abar[t] / (1 - abar[t])).float()
    for kind, want in (
        ("epsilon", snr.clamp(max=5) / snr),
        ("v_prediction", snr.clamp(max=5) / (snr + 1)),
        ("sample", snr.clamp(max=5)),
    ):
        schedule = NoiseSchedule.from_scheduler_config({**paper_config(), "prediction_type": kind})
        torch.testing.assert_close(schedule.min_snr_weight(t, 5.0), want, rtol=1e-5, atol=1e-7)
    assert float(NoiseSchedule.from_scheduler_config(paper_config()).min_snr_weight(t, 5)[2]) == 1


def test_unknown_prediction_type_is_a_config_error() -> None:
    from markup2im.errors import ConfigError

    with pytest.raises(ConfigError, match="prediction type 'noise'"):
        NoiseSchedule(torch.linspace(0.99, 0.01, 10), "noise")


# -- epsilon scaling: the output with its implied noise divided by lambda ------------------------


def _hand_eps(kind: str, x_t: torch.Tensor, output: torch.Tensor, a, s) -> torch.Tensor:
    """The noise a model output of type ``kind`` implies for x_t (float64, by hand)."""
    if kind == "epsilon":
        return output
    if kind == "sample":  # x_t = a x0 + s eps
        return (x_t - a * output) / s
    return a * output + s * x_t  # v = a eps - s x0


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_scale_noise_divides_the_implied_noise_by_hand(kind: str) -> None:
    """The scaled output implies the noise eps / lambda and the x0 that, with that noise, makes
    x_t again; it is that (x0, noise) pair in the model's own parameterisation."""
    schedule = NoiseSchedule.from_scheduler_config({**paper_config(), "prediction_type": kind})
    gen = torch.Generator().manual_seed(4)
    x_t = torch.randn(3, 1, 4, 5, generator=gen)
    output = torch.randn(3, 1, 4, 5, generator=gen)  # any output: a model's is not the target
    t = torch.tensor([1, 300, 990])
    scale = torch.tensor([1.01, 1.2, 0.9])
    got = schedule.scale_noise(x_t, output, t, scale)
    assert got.dtype == torch.float32 and got.shape == output.shape

    abar = torch.from_numpy(hand_abar()[t.numpy()]).reshape(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    lam = scale.double().reshape(-1, 1, 1, 1)
    x, out = x_t.double(), output.double()
    eps = _hand_eps(kind, x, out, a, s) / lam
    x0 = (x - s * eps) / a
    want = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[kind]
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    # the implied noise of the result is exactly eps / lambda, its x0 consistent with x_t
    implied = _hand_eps(kind, x, got.double(), a, s)
    np.testing.assert_allclose(
        implied.numpy(), (_hand_eps(kind, x, out, a, s) / lam).numpy(), rtol=1e-4, atol=1e-4
    )
    implied_x0 = schedule.x0_from_output(x_t, got, t).double()
    np.testing.assert_allclose((a * implied_x0 + s * implied).numpy(), x.numpy(), atol=1e-4)
    if kind == "epsilon":  # a plain division, nothing else
        assert torch.equal(got, output / scale.reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_scale_noise_of_one_keeps_the_output_and_its_dtype(kind: str) -> None:
    schedule = NoiseSchedule.from_scheduler_config({**paper_config(), "prediction_type": kind})
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(2, 3, 4, 4, generator=gen)
    output = torch.randn(2, 3, 4, 4, generator=gen)
    t = torch.tensor([20, 700])
    same = schedule.scale_noise(x_t, output, t, torch.ones(2))
    torch.testing.assert_close(same, output, atol=2e-4, rtol=0)
    half = schedule.scale_noise(x_t.bfloat16(), output.bfloat16(), t, torch.full((2,), 1.1))
    assert half.dtype == torch.bfloat16
