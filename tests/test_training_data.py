"""Tests of the training data: the seeded epoch order, bad images, data-loader workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from training_helpers import (
    assert_same_weights,
    build_dataset,
    dataset_fixture,  # noqa: F401
    tiny,
)

from markup2im.errors import DataError
from markup2im.training.data import EpochSampler
from markup2im.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_epoch_sampler_shards_a_seeded_permutation() -> None:
    shards = []
    for rank in range(3):
        sampler = EpochSampler(10, seed=42, rank=rank, world_size=3)
        sampler.set_epoch(1)
        shards.append(sampler.indices())
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set().union(*shards) == set(range(10))  # every example, two repeated as padding
    sampler = EpochSampler(10, seed=42, rank=0, world_size=1)
    sampler.set_epoch(1)
    first = sampler.indices()
    sampler.set_epoch(1, skip=3)
    assert sampler.indices() == first[3:] and len(sampler) == 7
    sampler.set_epoch(2)
    assert sampler.indices() != first and sorted(sampler.indices()) == list(range(10))


def test_corrupt_and_wrong_size_images_name_the_example(tmp_path: Path) -> None:
    corrupt = build_dataset(
        tmp_path / "corrupt",
        {"train": 4, "test": 1},
        bad={2: {"bytes": b"not a png", "path": None}},
    )
    with pytest.raises(DataError, match=r"example 2 \(train002.png\).*cannot decode"):
        train(tiny(corrupt, tmp_path / "a"))
    wrong = build_dataset(
        tmp_path / "wrong", {"train": 4, "test": 1}, bad={1: Image.new("L", (32, 64), 255)}
    )
    with pytest.raises(DataError, match=r"example 1 \(train001.png\).*32x64"):
        train(tiny(wrong, tmp_path / "b"))


@pytest.mark.parametrize("workers", [2])
def test_workers_persist_across_epochs_and_train_the_same_model(
    tmp_path: Path, dataset_dir: Path, workers: int
) -> None:
    """Workers decode and tokenise, live across epochs, and change nothing in the result."""
    settings = dict(max_steps=None, epochs=2, checkpoint_every=100)
    train(tiny(dataset_dir, tmp_path / "main", **settings))
    train(tiny(dataset_dir, tmp_path / "workers", num_workers=workers, **settings))
    assert_same_weights(tmp_path / "main" / "model", tmp_path / "workers" / "model")
