"""Training methods by name: what a training step feeds the model and what it must output.

The registry is :data:`markup2im.names.METHODS` (torch-free, read by the command line, the
workflow and the report); each entry names the module of this package that implements it, whose
``METHOD`` is a class with ``from_config(TrainConfig)``. Adding a method is one module here and
one entry there.
"""

from __future__ import annotations

import importlib

from markup2im.errors import ConfigError
from markup2im.names import METHODS
from markup2im.training.config import TrainConfig
from markup2im.training.methods.base import TrainingMethod


def method_class(name: str) -> type[TrainingMethod]:
    """The class that implements the registered method ``name``."""
    if name not in METHODS:
        raise ConfigError(f"unknown training method {name!r}; known: {', '.join(METHODS)}")
    module = importlib.import_module(f"{__name__}.{METHODS[name].module}")
    return module.METHOD


def build_method(config: TrainConfig) -> TrainingMethod:
    """The training method of ``config`` with its settings."""
    return method_class(config.method).from_config(config)
