"""Tests that notice a model that cannot learn.

A tiny model is trained for real on a handful of short formulas drawn by LaTeX, then checked the
way a person would: its loss falls, it denoises better than an untrained model, its samples
depend on their own markup and beat a blank page. A flipped gradient, markup zeroed before the
denoiser (in training or in sampling) or a model that ignores its conditioning fails here.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from markup2im.data.datasets import build_dataset, load_split, read_dataset_info
from markup2im.diffusion import NoiseSchedule
from markup2im.images import image_to_tensor, load_image
from markup2im.metrics import dtw
from markup2im.model import Markup2ImModel
from markup2im.sampling import example_generators, sample
from markup2im.training.config import TrainConfig
from markup2im.training.trainer import train

pytestmark = pytest.mark.slow

FORMULAS = 6
WIDTH, HEIGHT = 64, 16
STEPS = 600


@pytest.fixture(scope="module")
def formulas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short synthetic formulas rendered by LaTeX; the test split holds the same ones."""
    root = tmp_path_factory.mktemp("learning")
    path = root / "data"
    build_dataset(
        "math", path, synthetic=True, difficulty="simple", train=FORMULAS, validation=1,
        test=1, seed=3, width=WIDTH, height=HEIGHT, progress=False,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def trained(one_thread, formulas_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("learning-run")
    train(
        TrainConfig(
            dataset_dir=formulas_dir,
            output_dir=out,
            method="baseline",
            model_preset="tiny",
            encoder="offline",
            train_encoder=True,
            prediction_type="v_prediction",
            max_markup_length=64,
            batch_size=6,
            max_steps=STEPS,
            warmup_steps=20,
            learning_rate=3e-3,
            checkpoint_every=10_000,
        )  # fmt: skip
    )
    return out


def train_examples(dataset: Path) -> tuple[list[str], torch.Tensor, list[np.ndarray]]:
    """Markups, images in [-1, 1] and uint8 gold arrays of the training split."""
    info = read_dataset_info(dataset)
    split = load_split(dataset, "train")
    markups = [str(m) for m in split[info.markup_column]]
    images = [
        load_image(row["image"], channels=1, size=(info.width, info.height), name=f"train {i}")
        for i, row in enumerate(split)
    ]
    return (
        markups,
        torch.stack([image_to_tensor(im) for im in images]),
        [np.asarray(im) for im in images],
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(0).numpy()


def draw(model: Markup2ImModel, markups: list[str], seeds: list[int]) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return sample(model, markups, gens, sampler="ddim", num_inference_steps=25)


def test_loss_goes_down_clearly(trained: Path) -> None:
    with (trained / "train_log.csv").open(newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:30]), np.mean(losses[-30:])
    assert last < 0.5 * first, f"loss went from {first:.4f} to {last:.4f}"


def test_trained_model_denoises_better_than_untrained(trained: Path, formulas_dir: Path) -> None:
    trained_model = Markup2ImModel.from_pretrained(trained / "model")
    torch.manual_seed(1234)
    untrained = Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=HEIGHT, width=WIDTH, channels=1,
        max_markup_length=64, prediction_type="v_prediction",
    ).eval()  # fmt: skip
    markups, x0, _ = train_examples(formulas_dir)
    errors = {}
    for name, model in (("trained", trained_model), ("untrained", untrained)):
        schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
        hidden, mask = model.encode(markups)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        for t_value in (300, 700):
            t = torch.full((len(markups),), t_value)
            x_t = schedule.q_sample(x0, noise, t)
            with torch.no_grad():
                x0_hat = schedule.x0_from_output(x_t, model(x_t, t, hidden, mask), t)
            errors[name, t_value] = float((x0_hat.clamp(-1, 1) - x0).pow(2).mean())
    for t_value in (300, 700):
        assert errors["trained", t_value] < 0.5 * errors["untrained", t_value], errors


def test_images_follow_their_own_markup(trained: Path, formulas_dir: Path) -> None:
    model = Markup2ImModel.from_pretrained(trained / "model")
    markups, _, golds = train_examples(formulas_dir)
    n = len(markups)
    # the same noise (seed 7) for every markup: only the markup can make the images differ
    same_noise = draw(model, markups, [7] * n)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    gaps = [float((same_noise[i] - same_noise[j]).abs().mean()) for i, j in pairs]
    assert min(gaps) > 0.02 and np.mean(gaps) > 0.05, gaps
    # each image is closer to its own gold image than to the others' (the conditioning is right)
    own = 0
    for i in range(n):
        distances = [dtw(to_uint8(same_noise[i]), gold) for gold in golds]
        own += int(np.argmin(distances) == i)
    assert own >= n - 1, f"only {own} of {n} samples are closest to their own formula"
    # in one batch each example is conditioned on its own markup: reversing the batch reverses
    # the images
    forward = draw(model, markups[:3], [1, 2, 3])
    backward = draw(model, markups[:3][::-1], [3, 2, 1])
    torch.testing.assert_close(forward, backward.flip(0), atol=1e-4, rtol=0)


def test_samples_beat_a_blank_page(trained: Path, formulas_dir: Path) -> None:
    model = Markup2ImModel.from_pretrained(trained / "model")
    markups, _, golds = train_examples(formulas_dir)
    images = sample(model, markups, example_generators(0, range(len(markups))), sampler="ddim")
    ours = np.mean([dtw(to_uint8(x), g) for x, g in zip(images, golds, strict=True)])
    blank = np.mean([dtw(np.full_like(g, 255), g) for g in golds])
    assert ours < 0.7 * blank, f"samples DTW {ours:.2f}, blank page {blank:.2f}"
