"""markup2im.workflow.examples: the examples that get denoising frames and GIFs."""

from __future__ import annotations

import pytest

from markup2im.errors import ConfigError
from markup2im.workflow.examples import select_examples

SPLIT = ["test_0.png", "test_1.png", "test_2.png"]


def test_the_first_examples_or_the_named_ones() -> None:
    assert select_examples(SPLIT, 2, None, "the test split") == ["test_0.png", "test_1.png"]
    assert select_examples(SPLIT, 2, ["test_2.png"], "the test split") == ["test_2.png"]


def test_names_missing_from_the_split_are_an_error() -> None:
    with pytest.raises(ConfigError, match="frames_for names x.png, not in the test split of d"):
        select_examples(SPLIT, 2, ["x.png", "test_0.png"], "the test split of d")
