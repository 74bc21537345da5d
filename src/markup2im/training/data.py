"""The training data: (markup, image) pairs of a split, batches, and the seeded epoch order."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import datasets
import numpy as np
import torch

from markup2im.data.datasets import DatasetInfo
from markup2im.errors import DataError
from markup2im.images import image_to_tensor, load_image


class MarkupImageDataset(torch.utils.data.Dataset):
    """(markup, image tensor) pairs of one split; images decoded lazily and size-checked."""

    def __init__(self, split: datasets.Dataset, info: DatasetInfo, label: str, limit: int | None):
        if limit is not None:
            split = split.select(range(min(limit, len(split))))
        for column in (info.markup_column, "filename", "image"):
            if column not in split.column_names:
                raise DataError(f"{label}: no column {column!r} (columns: {split.column_names})")
        self.markups: list[str] = [str(m) for m in split[info.markup_column]]
        self.filenames: list[str] = [str(f) for f in split["filename"]]
        self.images = split.select_columns(["image"]).cast_column(
            "image", datasets.Image(decode=False)
        )
        self.info = info
        self.label = label

    def __len__(self) -> int:
        return len(self.markups)

    def __getitem__(self, index: int) -> tuple[int, str, torch.Tensor]:
        name = f"{self.label} example {index} ({self.filenames[index]})"
        image = load_image(
            self.images[index]["image"],
            channels=self.info.channels,
            size=(self.info.width, self.info.height),
            name=name,
        )
        return index, self.markups[index], image_to_tensor(image)


class Batch(NamedTuple):
    """One batch as the data loader gives it (the tensors pinned on CUDA)."""

    indices: list[int]  # example indices (the encoder cache's keys)
    markups: list[str]
    images: torch.Tensor  # (B, C, H, W) in [-1, 1]
    input_ids: torch.Tensor  # (B, L) token ids, right-padded
    mask: torch.Tensor  # (B, L) bool, True at the attended tokens


class Collate:
    """Stack a batch and tokenise its markup; runs in the data-loader workers when there are any.

    ``tokenize`` is the encoder's (:meth:`MarkupEncoder.tokenize`): ids and mask on the CPU.
    """

    def __init__(self, tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]):
        self.tokenize = tokenize

    def __call__(self, batch: Sequence[tuple[int, str, torch.Tensor]]) -> Batch:
        markups = [m for _, m, _ in batch]
        input_ids, mask = self.tokenize(markups)
        return Batch([i for i, _, _ in batch], markups, torch.stack([x for _, _, x in batch]),
                     input_ids, mask)  # fmt: skip


def seed_worker(worker_id: int) -> None:
    """Give each data-loader worker its own numpy and random seed (torch seeds itself per worker)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers (seed, process, step, ...), well mixed and stable."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


class EpochSampler(torch.utils.data.Sampler[int]):
    """This process's share of a seeded permutation of the data for one epoch.

    The permutation depends on (data seed, epoch) only; it is padded by wrapping round so that
    every process gets ceil(N / world) indices, and process r takes every world-th index from r.
    ``skip`` drops the first indices of this process's share (resuming inside an epoch).
    """

    def __init__(self, size: int, seed: int, rank: int, world_size: int) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_process = math.ceil(size / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        padded = (order * math.ceil(self.per_process * self.world_size / self.size))[
            : self.per_process * self.world_size
        ]
        return padded[self.rank :: self.world_size][self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(0, self.per_process - self.skip)
