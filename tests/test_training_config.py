"""Tests of the training settings: invalid ones are refused, the CLI flags reach TrainConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import (
    dataset_fixture,  # noqa: F401
    tiny,
)

from markup2im.errors import ConfigError
from markup2im.training.config import TrainConfig
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_invalid_settings_raise_config_error(tmp_path: Path, dataset_dir: Path) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        train(tiny(dataset_dir, tmp_path / "a", learning_rate=float("nan")))
    with pytest.raises(ConfigError, match="baseline"):
        train(tiny(dataset_dir, tmp_path / "b", method="baseline"))
    with pytest.raises(ConfigError, match="unknown model preset"):
        train(tiny(dataset_dir, tmp_path / "c", model_preset="huge"))


def test_cli_flags_reach_the_config_with_the_library_defaults(monkeypatch) -> None:
    """The new flags of `markup2im train` and their defaults (the CLI does not import torch,
    so it repeats them)."""
    import argparse

    import markup2im.cli.train as cli_module
    import markup2im.training.trainer as trainer

    parser = argparse.ArgumentParser()
    cli_module.add_parser(parser.add_subparsers())
    base = ["train", "--dataset-dir", "d", "--output-dir", "o", "--method", "baseline"]
    seen: list[TrainConfig] = []
    monkeypatch.setattr(trainer, "train", lambda config: seen.append(config))
    args = parser.parse_args(base)
    assert cli_module.run(args) == 0
    defaults = TrainConfig(dataset_dir=Path("d"), output_dir=Path("o"), method="baseline")
    assert seen[0] == dataclasses_replace(defaults, output_dir=seen[0].output_dir)
    args = parser.parse_args([*base, "--log-every", "50", "--warmup-per-process",
                              "--channels-last", "--compile", "--cache-encoder"])  # fmt: skip
    cli_module.run(args)
    assert (seen[1].log_every, seen[1].warmup_per_process, seen[1].channels_last,
            seen[1].compile, seen[1].cache_encoder) == (50, True, True, True, True)  # fmt: skip
    assert seen[1].deadline is None  # --walltime-margin outside Slurm: no deadline
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cli_module.run(parser.parse_args([*base, "--walltime-margin", "300"]))
    assert seen[2].deadline is None and seen[2].time_limit is None
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_JOB_END_TIME", "2000000000")
    cli_module.run(parser.parse_args([*base, "--walltime-margin", "300"]))
    assert (seen[3].deadline, seen[3].time_limit) == (2000000000 - 300, 2000000000)


def dataclasses_replace(config: TrainConfig, **changes: object) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
