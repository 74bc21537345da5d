"""Tests of markup2im.eps_scaling: the epsilon-scaling setting, its forms and its errors (the
arithmetic: tests/test_diffusion.py; the samplers: tests/test_sampling.py)."""

from __future__ import annotations

import pytest
import torch

from markup2im.eps_scaling import EpsScale, parse_eps_scale
from markup2im.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "k", "b"),
    [
        (1.01, 0.0, 1.01),
        (2, 0.0, 2),
        ({"k": 1e-5, "b": 1.002}, 1e-5, 1.002),
        ({"b": 1.004}, 0.0, 1.004),
        ({"k": 1e-5}, 1e-5, 1.0),
        ("1.017", 0.0, 1.017),
        (" 1.017 ", 0.0, 1.017),
        ("k=1e-5,b=1.002", 1e-5, 1.002),
        ("k = 1e-5, b = 1.002", 1e-5, 1.002),
        ("b=1.01", 0.0, 1.01),
        (EpsScale(2e-5, 1.003), 2e-5, 1.003),
    ],
)
def test_parse_a_number_a_mapping_or_text(value, k: float, b: float) -> None:
    scale = EpsScale.parse(value)
    assert (scale.k, scale.b) == (k, b)
    assert EpsScale.parse(str(scale)) == scale  # the command line's form parses back


def test_the_identity_is_the_plain_sampler() -> None:
    for value in (1, 1.0, "1", {"k": 0, "b": 1}, "k=0,b=1", {}, EpsScale()):
        assert EpsScale.parse(value).identity, value
    for value in (1.01, 0.99, {"k": 1e-6}, "k=1e-5,b=1"):
        assert not EpsScale.parse(value).identity, value
    assert parse_eps_scale(None) is None
    assert parse_eps_scale("1.01") == EpsScale(b=1.01)


def test_lambda_is_linear_in_the_training_timestep() -> None:
    scale = EpsScale(k=1e-4, b=1.01)
    assert scale.at(0) == 1.01
    assert scale.at(999) == pytest.approx(1.01 + 0.0999)
    t = torch.tensor([999.0, 500.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(scale.at(t), 1e-4 * t + 1.01)
    assert EpsScale(b=1.5).at(123) == 1.5
    assert str(EpsScale(b=1.01)) == "1.01" and str(scale) == "k=0.0001,b=1.01"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be > 0, got 0"),
        (-1.5, "must be > 0, got -1.5"),
        ("0", "must be > 0, got 0"),
        ({"k": -0.01}, r"lambda_t = -0.01 t \+ 1 must be > 0 for every t in 0..999"),
        ("k=-0.002,b=1.5", "it reaches -0.498"),
        ({"k": 0.01, "b": 0}, "must be > 0 for every t"),  # lambda_0 = b
        ("junk", "expected a number or k=...,b=..., got 'junk'"),
        ("", "expected a number or k=...,b=..."),
        ("1.01,", "expected a number or k=...,b=..."),
        ("k=x", "expected a number or k=...,b=..."),
        ({"c": 1}, r"unknown keys \['c'\]; use k and b"),
        ("k=1e-5,scale=2", r"unknown keys \['scale'\]"),
        (True, "b must be a number, got True"),
        ({"k": "1"}, "k must be a number, got '1'"),
        ("nan", "b must be finite"),
        ({"k": float("inf")}, "k must be finite"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(value, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        EpsScale.parse(value, "samplers[1].eps_scale")
    assert str(info.value).startswith("samplers[1].eps_scale: ")
    assert "eps_scale: eps_scale" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^eps_scale: "):
        parse_eps_scale(value)


def test_the_constructor_checks_too() -> None:
    with pytest.raises(ConfigError, match="eps_scale: must be > 0, got 0"):
        EpsScale(b=0)
    with pytest.raises(ConfigError, match="eps_scale: lambda_t"):
        EpsScale(k=-1, b=1)


def test_numpy_numbers_are_plain_floats() -> None:
    np = pytest.importorskip("numpy")
    scale = EpsScale.parse({"k": np.float32(1e-5), "b": np.float64(1.002)})
    assert type(scale.k) is float and type(scale.b) is float
    assert str(EpsScale.parse(np.int64(2))) == "2.0"
