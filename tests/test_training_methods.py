"""Tests of the training-method registry and the two methods of the paper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from markup2im.diffusion import NoiseSchedule
from markup2im.errors import ConfigError
from markup2im.model import DEFAULT_SCHEDULER_CONFIG
from markup2im.names import METHODS
from markup2im.scheduled_sampling import ScheduledSamplingConfig, prepare_step
from markup2im.training.config import TrainConfig
from markup2im.training.methods import build_method, method_class


def config(method: str, **settings: object) -> TrainConfig:
    return TrainConfig(dataset_dir=Path("d"), output_dir=Path("o"), method=method, **settings)


def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + t.float()[:, None, None, None] / 1000


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_builds_and_draws_a_step(name: str) -> None:
    """Each entry of the registry names a module whose METHOD builds from a config and gives
    a step's inputs of the data's shape."""
    method = build_method(config(name))
    assert isinstance(method, method_class(name))
    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    inputs = method.inputs(eps_model, schedule, x0, 0.5, torch.Generator().manual_seed(0))
    assert inputs.x_t.shape == inputs.target.shape == x0.shape
    assert inputs.timesteps.shape == (3,)
    assert 0.0 <= method.probability(0.5) <= 1.0


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown training method 'teacher_forcing'.*baseline"):
        method_class("teacher_forcing")
    with pytest.raises(ConfigError, match="method must be one of"):
        config("teacher_forcing").validate()


def test_baseline_refuses_rollout_weights() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        build_method(config("baseline", ss_end=(0.8,)))
    assert build_method(config("baseline", ss_end=(0.0,))).probability(1.0) == 0.0


def test_scheduled_sampling_takes_the_paper_defaults_and_the_settings() -> None:
    paper = build_method(config("scheduled_sampling"))
    assert paper.weights == ScheduledSamplingConfig.from_settings()
    assert paper.probability(0.0) == 0.0 and paper.probability(1.0) == pytest.approx(0.8)
    custom = build_method(config("scheduled_sampling", ss_max_m=2, ss_end=(0.5, 0.3), ss_min_t=50))
    assert custom.weights == ScheduledSamplingConfig(
        max_m=2, start=(0.0, 0.0), end=(0.5, 0.3), min_t=50
    )


def test_methods_draw_the_same_randomness_as_prepare_step() -> None:
    """On the CPU a method's step is exactly prepare_step with its weights, and at progress 0
    scheduled sampling (weight 0 for m = 1) is the baseline, draw for draw."""
    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    baseline, paper = build_method(config("baseline")), build_method(config("scheduled_sampling"))
    for seed in range(4):
        ours = paper.inputs(eps_model, schedule, x0, 0.6, torch.Generator().manual_seed(seed))
        reference = prepare_step(
            eps_model, schedule, paper.weights, x0, 0.6, torch.Generator().manual_seed(seed)
        )
        assert ours.m == reference.m and torch.equal(ours.x_t, reference.x_t)
        a = paper.inputs(eps_model, schedule, x0, 0.0, torch.Generator().manual_seed(seed))
        b = baseline.inputs(eps_model, schedule, x0, 0.9, torch.Generator().manual_seed(seed))
        assert a.m == b.m == 0 and torch.equal(a.x_t, b.x_t) and torch.equal(a.target, b.target)


def test_the_train_command_parses_without_torch() -> None:
    """The flags come from TrainConfig's fields, which import no torch."""
    code = (
        "import sys, argparse; from markup2im.cli import train; "
        "p = argparse.ArgumentParser(); train.add_parser(p.add_subparsers()); "
        "p.parse_args(['train', '--dataset-dir', 'd', '--output-dir', 'o', '--method', "
        "'scheduled_sampling']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_input_perturbation_step_by_hand() -> None:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) (eps + gamma xi), the target stays eps's; t, the
    uniform that draws m, eps and then xi all come from the step's generator."""
    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    method = build_method(config("input_perturbation", ip_gamma=0.3))
    inputs = method.inputs(eps_model, schedule, x0, 0.5, torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)
    t = torch.randint(0, 1000, (3,), generator=generator)
    torch.rand((), generator=generator, dtype=torch.float64)  # the uniform that draws m (0)
    eps = torch.randn(x0.shape, generator=generator)
    xi = torch.randn(x0.shape, generator=generator)
    abar = schedule.abar(t).reshape(-1, 1, 1, 1)
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * (eps + 0.3 * xi)
    assert inputs.m == 0 and torch.equal(inputs.timesteps, t)
    torch.testing.assert_close(inputs.x_t, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(inputs.target, eps)
    # a method that ignored gamma would give the baseline's input
    plain = build_method(config("baseline"))
    base = plain.inputs(eps_model, schedule, x0, 0.5, torch.Generator().manual_seed(11))
    assert torch.equal(base.target, inputs.target) and not torch.allclose(base.x_t, inputs.x_t)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_input_perturbation_targets_the_unperturbed_pair(prediction_type: str) -> None:
    config_ = {**DEFAULT_SCHEDULER_CONFIG, "prediction_type": prediction_type}
    schedule = NoiseSchedule.from_scheduler_config(config_)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    method = build_method(config("input_perturbation"))
    assert method.gamma == 0.1  # DDPM-IP's default
    inputs = method.inputs(eps_model, schedule, x0, 0.0, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    t = torch.randint(0, 1000, (2,), generator=generator)
    torch.rand((), generator=generator, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator)
    assert torch.equal(inputs.target, schedule.target_from_noise(x0, eps, t))


def test_gamma_zero_is_the_baseline_step_exactly() -> None:
    from markup2im.training.methods.scheduled_sampling import draw_step

    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    baseline = build_method(config("baseline"))
    for seed in range(3):
        a = baseline.inputs(eps_model, schedule, x0, 0.3, torch.Generator().manual_seed(seed))
        b = draw_step(eps_model, schedule, baseline.weights, x0, 0.3,
                      torch.Generator().manual_seed(seed), gamma=0.0)  # fmt: skip
        assert torch.equal(a.x_t, b.x_t) and torch.equal(a.target, b.target)


def test_the_perturbation_comes_from_the_step_generator() -> None:
    """Same seed, same step (what a resumed run relies on); another seed, another xi."""
    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    method = build_method(config("input_perturbation"))
    torch.manual_seed(0)
    a = method.inputs(eps_model, schedule, x0, 0.3, torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global RNG plays no part
    b = method.inputs(eps_model, schedule, x0, 0.3, torch.Generator().manual_seed(5))
    c = method.inputs(eps_model, schedule, x0, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a.x_t, b.x_t) and not torch.equal(a.x_t, c.x_t)


def test_scheduled_sampling_composes_with_input_perturbation() -> None:
    """With ip_gamma, a rollout starts from q_sample(x0, eps + gamma xi, t + m); its target is
    recomputed from the rolled-out x_t as always."""
    schedule = NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    settings = {"ss_start": (1.0,), "ss_end": (1.0,)}
    plain = build_method(config("scheduled_sampling", **settings))
    perturbed = build_method(config("scheduled_sampling", ip_gamma=0.2, **settings))
    a = plain.inputs(eps_model, schedule, x0, 0.5, torch.Generator().manual_seed(2))
    b = perturbed.inputs(eps_model, schedule, x0, 0.5, torch.Generator().manual_seed(2))
    assert a.m == b.m == 1 and torch.equal(a.timesteps, b.timesteps)
    generator = torch.Generator().manual_seed(2)
    t = torch.randint(0, 1000, (3,), generator=generator)
    torch.rand((), generator=generator, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator)
    fresh = torch.randn(x0.shape, generator=generator)
    xi = torch.randn(x0.shape, generator=generator)
    start = schedule.q_sample(x0, eps + 0.2 * xi, t + 1)
    x0_hat = schedule.x0_from_output(start, eps_model(start, t + 1), t + 1)
    x_t = schedule.q_sample(x0_hat, fresh, t)
    torch.testing.assert_close(b.x_t, x_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.target, schedule.target(x_t, x0, t), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.x_t, b.x_t)


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("input_perturbation", {"ip_gamma": -0.1}, "ip_gamma must be a number >= 0"),
        ("input_perturbation", {"ip_gamma": 0.0}, "is the baseline"),
        ("input_perturbation", {"ss_end": (0.5,)}, "without scheduled sampling"),
        ("baseline", {"ip_gamma": 0.1}, "without input perturbation"),
    ],
)
def test_bad_input_perturbation_settings_name_the_setting(
    method: str, settings: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_config = config(method, **settings)
        settings_config.validate()
        build_method(settings_config)
