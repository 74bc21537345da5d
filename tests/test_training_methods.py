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
