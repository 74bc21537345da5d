"""Project error types.

Every error raised for bad input names what is wrong (a file, a config key, a line) so that the
command line can print it without a traceback.
"""

from __future__ import annotations


class Markup2ImError(Exception):
    """Base class: a problem the user can fix, with a message that says where."""


class ConfigError(Markup2ImError):
    """A configuration value or name is invalid (unknown preset, dataset, key, wrong type)."""


class DataError(Markup2ImError):
    """A dataset, image or markup file is missing, corrupt or of the wrong shape."""


class RenderError(Markup2ImError):
    """A renderer is missing or failed as a whole (single failed items are recorded, not raised)."""


class HubUnavailableError(Markup2ImError):
    """The Hugging Face hub cannot be reached (offline, or no network)."""


class ModelError(Markup2ImError):
    """A saved model directory is missing or incomplete."""


class MissingDependencyError(Markup2ImError):
    """An optional package that a command needs is not installed (the message says how)."""


class TrainingDivergedError(Markup2ImError):
    """Training produced a non-finite loss or weights."""

    def __init__(
        self,
        message: str,
        *,
        learning_rate: float | None = None,
        suggested_learning_rate: float | None = None,
    ) -> None:
        super().__init__(message)
        self.learning_rate = learning_rate
        self.suggested_learning_rate = suggested_learning_rate
