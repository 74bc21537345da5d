"""A tiny trained model for the tests that use a model (``markup2im draw``, the demo)."""

from __future__ import annotations

from pathlib import Path

WIDTH, HEIGHT = 64, 16
MAX_MARKUP = 32  # tokens (bytes: the offline encoder reads bytes)
TRAIN_STEPS = 60


def train_tiny_model(root: Path) -> Path:
    """Train a tiny model for 60 steps on six short formulas drawn by LaTeX (about 15 s);
    returns its model directory.

    Enough for tests of using a model (determinism, sizes, files, pages), not for quality:
    tests/test_learning.py checks that a model learns.
    """
    from markup2im.data.datasets import build_dataset
    from markup2im.training.config import TrainConfig
    from markup2im.training.trainer import train

    build_dataset(
        "math", root / "data", synthetic=True, difficulty="simple", train=6, validation=1,
        test=1, seed=3, width=WIDTH, height=HEIGHT, progress=False,
    )  # fmt: skip
    train(
        TrainConfig(
            dataset_dir=root / "data",
            output_dir=root / "run",
            method="baseline",
            model_preset="tiny",
            encoder="offline",
            train_encoder=True,
            prediction_type="v_prediction",
            max_markup_length=MAX_MARKUP,
            batch_size=6,
            max_steps=TRAIN_STEPS,
            warmup_steps=10,
            learning_rate=3e-3,
            checkpoint_every=10_000,
        )  # fmt: skip
    )
    return root / "run" / "model"


TINY_HUB_NAME = "markup2im-test/tiny-gpt-neo"
TINY_HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding one tiny GPT-Neo as ``TINY_HUB_NAME`` at
    ``TINY_HUB_COMMIT`` (also its ``main``): point HF_HUB_CACHE at it and, offline, a hub name
    loads through the hub code path without a network."""
    import shutil

    from test_encoder import _gpt_neo_dir

    cache = root / "hub-cache"
    repo = cache / f"models--{TINY_HUB_NAME.replace('/', '--')}"
    shutil.copytree(_gpt_neo_dir(root), repo / "snapshots" / TINY_HUB_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(TINY_HUB_COMMIT)
    return cache
