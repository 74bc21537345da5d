"""Tests of markup2im.pipeline, the one path from markup to images: the seeding rule (example k
of seed s gets the same image alone, in a batch and in a split), frames, progress and settings
(epsilon scaling among them), with an untrained tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import drawn_example, pixels, save_untrained_model, write_tables_dataset
from PIL import Image

from markup2im.eps_scaling import EpsScale
from markup2im.errors import ConfigError
from markup2im.generate import generate
from markup2im.images import tensor_to_image
from markup2im.model import Markup2ImModel
from markup2im.pipeline import Markup2ImPipeline, StepBar, resolve_device
from markup2im.sampling import example_generators, frame_steps, sample

MARKUPS = ["<table><tr><td>1</td></tr></table>", "<table></table>", "x", r"\alpha"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Markup2ImPipeline:
    return Markup2ImPipeline.from_pretrained(model_dir, device="cpu")


def _images(model: Markup2ImModel, markups: list[str], generators, steps: int, **settings) -> list:
    result = sample(
        model, markups, generators, sampler="ddim", num_inference_steps=steps, **settings
    )
    return [pixels(tensor_to_image(x)) for x in result]


def test_one_markup_drawn_with_seed_s_is_example_0_of_s(pipe: Markup2ImPipeline) -> None:
    """A single markup keeps the image it had before the one seeding rule."""
    for seed in (0, 7):
        drawing = pipe(MARKUPS[0], steps=4, seed=seed)
        expected = _images(pipe.model, MARKUPS[:1], example_generators(seed, [0]), 4)
        assert len(drawing.images) == 1 and drawing.frames == [[]]
        assert np.array_equal(pixels(drawing.images[0]), expected[0])
    assert not np.array_equal(
        pixels(pipe(MARKUPS[0], steps=4, seed=0).images[0]),
        pixels(pipe(MARKUPS[0], steps=4, seed=1).images[0]),
    )


def test_markup_i_of_a_list_is_example_i_of_the_seed(pipe: Markup2ImPipeline) -> None:
    drawing = pipe(MARKUPS, steps=4, seed=3)
    expected = _images(pipe.model, MARKUPS, example_generators(3, range(len(MARKUPS))), 4)
    assert [im.size for im in drawing.images] == [(64, 64)] * len(MARKUPS)
    assert all(im.mode == "L" for im in drawing.images)
    for image, want in zip(drawing.images, expected, strict=True):
        assert np.array_equal(pixels(image), want)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to the denoiser's batch invariance (1e-5): at most a rounding step apart."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_example_k_alone_in_a_batch_and_in_a_split(
    pipe: Markup2ImPipeline, model_dir: Path, tmp_path: Path
) -> None:
    """Example k drawn alone with (seed, index=k) is example k of a batch and of a split run by
    ``markup2im generate`` with that seed."""
    data = write_tables_dataset(tmp_path / "data")
    markups = [drawn_example(i)[0] for i in range(4)]
    for batch_size in (1, 3):
        generate(
            model_dir, data, tmp_path / f"b{batch_size}", limit=4, batch_size=batch_size,
            sampler="ddim", num_inference_steps=4, seed=11, device="cpu",
        )  # fmt: skip
    batch = pipe(markups, steps=4, seed=11)
    for k, markup in enumerate(markups):
        alone = pixels(pipe(markup, steps=4, seed=11, indices=[k]).images[0])
        split_alone = pixels(tmp_path / "b1" / "images" / f"test_{k}.png")
        assert np.array_equal(alone, split_alone)  # the same noise and the same batch: bit for bit
        _close(alone, pixels(tmp_path / "b3" / "images" / f"test_{k}.png"))
        _close(alone, pixels(batch.images[k]))


def test_one_seed_per_markup(pipe: Markup2ImPipeline) -> None:
    """``markup2im draw --markup-file`` draws line i as example 0 of seed + i."""
    drawing = pipe(MARKUPS[:3], steps=3, seed=[5, 6, 7], indices=[0, 0, 0], batch_size=1)
    for i, markup in enumerate(MARKUPS[:3]):
        single = pipe(markup, steps=3, seed=5 + i).images[0]
        assert np.array_equal(pixels(drawing.images[i]), pixels(single))


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_a_batch_draws_what_single_draws_do(pipe: Markup2ImPipeline, sampler: str) -> None:
    together = pipe(MARKUPS, sampler=sampler, steps=5, seed=10).images
    in_twos = pipe(MARKUPS, sampler=sampler, steps=5, seed=10, batch_size=2).images
    alone = [
        pipe(m, sampler=sampler, steps=5, seed=10, indices=[i]).images[0]
        for i, m in enumerate(MARKUPS)
    ]
    for batch in (together, in_twos):
        for a, b in zip(batch, alone, strict=True):
            _close(pixels(a), pixels(b))


def test_frames_and_progress(pipe: Markup2ImPipeline) -> None:
    calls: list[tuple[int, int]] = []
    drawing = pipe(
        MARKUPS[:2], steps=6, seed=0, frames_every=1, batch_size=1,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert len(drawing.images) == 2 and [len(f) for f in drawing.frames] == [6, 6]
    assert drawing.frame_steps == list(range(6))
    assert all(f.size == (64, 64) and f.mode == "L" for f in drawing.frames[0])
    assert calls == [(i, 12) for i in range(1, 13)]
    # the images are the same with frames kept or not
    plain = pipe(MARKUPS[:2], steps=6, seed=0, batch_size=1)
    for a, b in zip(drawing.images, plain.images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))
    # DDIM ends on the clipped x0 prediction of its last step: the last frame is the image
    last = pixels(drawing.frames[1][-1]).astype(int)
    assert np.abs(last - pixels(drawing.images[1]).astype(int)).max() <= 1


def test_frames_for_some_markups_and_a_frame_sink(pipe: Markup2ImPipeline) -> None:
    got: list[tuple[int, int, Image.Image]] = []
    drawing = pipe(
        MARKUPS[:3], steps=7, seed=1, frames_every=3, frames_for=[False, True, True],
        batch_size=2, on_frame=lambda number, step, frame: got.append((number, step, frame)),
    )  # fmt: skip
    assert drawing.frames == [[], [], []]  # the sink took them
    assert drawing.frame_steps == sorted(frame_steps(7, 3)) == [0, 3, 6]
    assert sorted((n, s) for n, s, _ in got) == [(n, s) for n in (1, 2) for s in (0, 3, 6)]
    kept = pipe(MARKUPS[:3], steps=7, seed=1, frames_every=3, frames_for=[False, True, True])
    assert [len(f) for f in kept.frames] == [0, 3, 3]
    sunk = {(n, s): f for n, s, f in got}
    assert np.array_equal(pixels(kept.frames[2][1]), pixels(sunk[2, 3]))


def test_batches_say_where_they_start(pipe: Markup2ImPipeline) -> None:
    batches = list(pipe.batches(MARKUPS, steps=2, batch_size=3))
    assert [(b.start, len(b.images)) for b in batches] == [(0, 3), (3, 1)]


def test_the_models_mode_is_restored(pipe: Markup2ImPipeline) -> None:
    pipe.model.train()
    try:
        pipe("x", steps=2)
        assert pipe.model.denoiser.training
    finally:
        pipe.model.eval()
    pipe("x", steps=2)
    assert not pipe.model.denoiser.training


def test_draw_in_bf16(pipe: Markup2ImPipeline) -> None:
    images = pipe(["x", r"\alpha"], sampler="ddim", steps=3, precision="bf16").images
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    with pytest.raises(ConfigError, match="unknown precision"):
        pipe("x", steps=2, precision="half")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": True}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"seed": [1]}, "2 markups but 1 seeds"),
        ({"indices": [0, 1, 2]}, "3 indices"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"frames_every": -1}, "frames_every >= 0"),
        ({"frames_every": 1, "frames_for": [True]}, "frames_for has 1 entries"),
        ({"sampler": "euler"}, "unknown sampler"),
        ({"steps": 0}, "num_inference_steps must lie in 1..1000"),
        ({"eps_scale": 0}, "eps_scale: must be > 0, got 0"),
        ({"eps_scale": "-1"}, "eps_scale: must be > 0, got -1"),
        ({"eps_scale": {"k": -0.01}}, r"eps_scale: lambda_t = -0.01 t \+ 1 must be > 0"),
        ({"eps_scale": "junk"}, "eps_scale: expected a number or k=...,b=..."),
        ({"eps_scale": {"k": 0, "scale": 2}}, r"eps_scale: unknown keys \['scale'\]"),
    ],
)
def test_bad_settings_are_config_errors(pipe: Markup2ImPipeline, settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        pipe(["x", "y"], **{"steps": 2, **settings})


@pytest.mark.parametrize("identity", [None, 1, 1.0, "1", {"k": 0, "b": 1}, EpsScale()])
def test_eps_scale_1_draws_the_plain_images(pipe: Markup2ImPipeline, identity) -> None:
    plain = pipe(MARKUPS[:2], sampler="dpmsolver++", steps=3, seed=4).images
    drawn = pipe(MARKUPS[:2], sampler="dpmsolver++", steps=3, seed=4, eps_scale=identity).images
    for a, b in zip(drawn, plain, strict=True):
        assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("scale", [1.05, "k=1e-4,b=1.01", {"k": 1e-4, "b": 1.01}])
def test_eps_scale_reaches_the_sampler(pipe: Markup2ImPipeline, scale) -> None:
    """Every form of the setting is the sampler's eps_scale, and it changes the images."""
    drawing = pipe(MARKUPS[:2], steps=4, seed=3, eps_scale=scale)
    gens = example_generators(3, [0, 1])
    want = _images(pipe.model, MARKUPS[:2], gens, 4, eps_scale=EpsScale.parse(scale))
    plain = _images(pipe.model, MARKUPS[:2], example_generators(3, [0, 1]), 4)
    for image, expected, unscaled in zip(drawing.images, want, plain, strict=True):
        assert np.array_equal(pixels(image), expected)
        assert not np.array_equal(pixels(image), unscaled)


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_step_bar_follows_the_progress(capsys) -> None:
    with StepBar("draw ddim") as bar:
        bar(1, 3)
        bar(3, 3)
        assert bar.bar.n == 3 and bar.bar.total == 3
    assert "draw ddim" in capsys.readouterr().err
