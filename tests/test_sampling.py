"""Tests of the samplers and ``markup2im generate`` with an untrained tiny model."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from markup2im.cli import main as cli_main
from markup2im.data.datasets import DatasetInfo, write_dataset_info
from markup2im.errors import ConfigError, DataError
from markup2im.sampling import (
    SAMPLERS,
    example_generators,
    frame_steps,
    generate,
    make_scheduler,
    sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def drawn_example(i: int) -> tuple[str, Image.Image]:
    """A 64x64 grayscale image of black rectangles and the markup that describes it."""
    rng = np.random.default_rng(100 + i)
    image = Image.new("L", (64, 64), 255)
    draw = ImageDraw.Draw(image)
    cells = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(2, 40, size=2))
        w, h = (int(v) for v in rng.integers(4, 20, size=2))
        draw.rectangle([x, y, x + w, y + h], fill=0)
        cells.append(f"<td>{x},{y},{w},{h}</td>")
    return f"<table><tr>{''.join(cells) * (i + 1)}</tr></table>", image


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tables"
    features = datasets.Features(
        {"html": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits = {}
    for split, n in {"train": 2, "validation": 1, "test": 4}.items():
        examples = [drawn_example(i) for i in range(n)]
        splits[split] = datasets.Dataset.from_dict(
            {
                "html": [m for m, _ in examples],
                "filename": [f"{split}_{i}.png" for i in range(n)],
                "image": [im for _, im in examples],
            },
            features=features,
        )
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("tables", "html", 64, 64, 1))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from markup2im.pipeline import Markup2ImModel

    torch.manual_seed(0)
    model = Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=64, width=64, channels=1,
        max_markup_length=64,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir: Path):
    from markup2im.pipeline import Markup2ImModel

    loaded = Markup2ImModel.from_pretrained(model_dir, device="cpu")
    loaded.eval()
    return loaded


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_ddpm_is_the_papers_sampler(model) -> None:
    scheduler = make_scheduler("ddpm", model.scheduler_config)
    assert len(scheduler.timesteps) == 1000
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    assert scheduler.config.clip_sample and scheduler.config.clip_sample_range == 1.0
    assert scheduler.config.variance_type == "fixed_small"
    assert len(make_scheduler("ddim", model.scheduler_config).timesteps) == 50
    assert len(make_scheduler("dpmsolver++", model.scheduler_config, 7).timesteps) == 7
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_scheduler("euler", model.scheduler_config)
    with pytest.raises(ConfigError, match="1..1000"):
        make_scheduler("ddim", model.scheduler_config, 5000)


def test_frame_steps() -> None:
    assert frame_steps(10, 4) == {0, 4, 8, 9}
    assert frame_steps(10, 0) == set()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_stay_bounded_and_follow_the_seed(model, sampler: str) -> None:
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    run = lambda seed: sample(  # noqa: E731
        model, markups, example_generators(seed, [0, 1]), sampler=sampler, num_inference_steps=6
    )
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (2, 1, 64, 64)
    assert torch.isfinite(a).all() and a.abs().max() <= 1 + 1e-5
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_images_do_not_depend_on_batch_size(tmp_path: Path, model_dir: Path, dataset_dir: Path):
    for batch in (1, 3):
        generate(
            model_dir, dataset_dir, tmp_path / f"b{batch}", limit=3, batch_size=batch,
            sampler="ddpm", num_inference_steps=8, seed=5, device="cpu",
        )  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "b1" / "images").iterdir())
    assert names == ["test_0.png", "test_1.png", "test_2.png"]
    for name in names:
        np.testing.assert_array_equal(
            pixels(tmp_path / "b1" / "images" / name), pixels(tmp_path / "b3" / "images" / name)
        )
    # distinct examples get distinct noise
    assert not np.array_equal(
        pixels(tmp_path / "b1" / "images" / names[0]), pixels(tmp_path / "b1" / "images" / names[1])
    )


def test_only_some_examples_get_the_images_of_a_full_run(tmp_path, model_dir, dataset_dir):
    """The workflow draws frames in a job of its own with --only: same noise, same images."""
    generate(
        model_dir, dataset_dir, tmp_path / "all", limit=3, batch_size=2, sampler="ddim",
        num_inference_steps=4, seed=5, device="cpu",
    )  # fmt: skip
    result = generate(
        model_dir, dataset_dir, tmp_path / "some", limit=3, batch_size=2, sampler="ddim",
        num_inference_steps=4, seed=5, frames_every=2, only=["test_2.png"], device="cpu",
    )  # fmt: skip
    assert result.count == 1
    assert [p.name for p in (tmp_path / "some" / "images").iterdir()] == ["test_2.png"]
    assert [p.name for p in (tmp_path / "some" / "frames").iterdir()] == ["test_2"]
    np.testing.assert_array_equal(
        pixels(tmp_path / "all" / "images" / "test_2.png"),
        pixels(tmp_path / "some" / "images" / "test_2.png"),
    )
    with pytest.raises(DataError, match=r"--only names files not among the first 3 .*test_7"):
        generate(model_dir, dataset_dir, tmp_path / "x", limit=3, only=["test_7.png"],
                 device="cpu")  # fmt: skip


def test_generate_writes_images_gold_and_frames(tmp_path: Path, model_dir, dataset_dir) -> None:
    out = tmp_path / "out"
    result = generate(
        model_dir, dataset_dir, out, limit=2, batch_size=2, sampler="ddim",
        num_inference_steps=10, frames_every=4, frames_for=["test_1.png"], device="cpu",
    )  # fmt: skip
    assert result.count == 2
    for name in ("test_0.png", "test_1.png"):
        with Image.open(out / "images" / name) as image:
            assert image.mode == "L" and image.size == (64, 64)
    gold = pixels(out / "gold" / "test_1.png")
    np.testing.assert_array_equal(gold, np.asarray(drawn_example(1)[1]))
    frames = sorted(p.name for p in (out / "frames" / "test_1").iterdir())
    assert frames == ["step_0000.png", "step_0004.png", "step_0008.png", "step_0009.png"]
    assert not (out / "frames" / "test_0").exists()
    # DDIM ends on the clipped x0 prediction of its last step: the last frame is the image
    last = pixels(out / "frames" / "test_1" / "step_0009.png").astype(int)
    assert np.abs(last - pixels(out / "images" / "test_1.png").astype(int)).max() <= 1


def test_generate_into_a_used_directory_keeps_nothing_of_the_earlier_run(
    tmp_path: Path, model_dir, dataset_dir
) -> None:
    """Old images used to stay beside the new ones, and evaluate scored them all."""
    out = tmp_path / "out"
    generate(model_dir, dataset_dir, out, limit=2, sampler="ddim", num_inference_steps=2,
             frames_every=1, device="cpu")  # fmt: skip
    for stale in ("images/old.png", "gold/old.png", "frames/old/step_0000.png"):
        (out / stale).parent.mkdir(parents=True, exist_ok=True)
        (out / stale).write_bytes(b"earlier run")
    (out / "notes.txt").write_text("not ours\n")
    generate(model_dir, dataset_dir, out, limit=1, sampler="ddim", num_inference_steps=2,
             frames_every=1, device="cpu")  # fmt: skip
    assert sorted(p.name for p in (out / "images").iterdir()) == ["test_0.png"]
    assert sorted(p.name for p in (out / "gold").iterdir()) == ["test_0.png"]
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["test_0"]
    assert (out / "notes.txt").read_text() == "not ours\n"  # only the three directories go


def test_zero_inference_steps_is_rejected(tmp_path: Path, model, model_dir, dataset_dir, capsys):
    """0 used to mean "the sampler's default" (50 for DDIM) without a word."""
    for sampler in SAMPLERS:
        with pytest.raises(ConfigError, match="num_inference_steps must lie in 1..1000, got 0"):
            make_scheduler(sampler, model.scheduler_config, 0)
    with pytest.raises(SystemExit) as info:
        cli_main(
            ["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
             "--output-dir", str(tmp_path / "o"), "--num-inference-steps", "0"]
        )  # fmt: skip
    assert info.value.code == 2
    assert "--num-inference-steps: must be > 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_frames_for_unknown_file_is_rejected(tmp_path: Path, model_dir, dataset_dir) -> None:
    with pytest.raises(DataError, match="nope.png"):
        generate(
            model_dir, dataset_dir, tmp_path / "o", limit=1, frames_every=2,
            frames_for=["nope.png"], device="cpu",
        )  # fmt: skip


def test_missing_model_dir_names_it(tmp_path: Path, dataset_dir: Path, capsys) -> None:
    missing = tmp_path / "no_such_model"
    code = cli_main(
        ["generate", "--model-dir", str(missing), "--dataset-dir", str(dataset_dir),
         "--output-dir", str(tmp_path / "o"), "--limit", "1", "--device", "cpu"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "o" / "images").exists()


def test_cli_generate_with_dpmsolver(tmp_path: Path, model_dir: Path, dataset_dir: Path) -> None:
    out = tmp_path / "o"
    code = cli_main(
        ["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
         "--output-dir", str(out), "--limit", "1", "--sampler", "dpmsolver++",
         "--num-inference-steps", "4", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    assert [p.name for p in (out / "images").iterdir()] == ["test_0.png"]
    assert [p.name for p in (out / "gold").iterdir()] == ["test_0.png"]
    # bf16 and channels-last from the command line: the same image within bf16's tolerance
    fast = tmp_path / "bf16"
    code = cli_main(
        ["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
         "--output-dir", str(fast), "--limit", "1", "--sampler", "dpmsolver++",
         "--num-inference-steps", "4", "--device", "cpu", "--precision", "bf16",
         "--channels-last"]
    )  # fmt: skip
    assert code == 0
    diff = pixels(fast / "images" / "test_0.png").astype(int) - pixels(
        out / "images" / "test_0.png"
    )
    assert np.abs(diff).mean() < 8


def test_cli_choices_match_the_library() -> None:
    from markup2im.cli import generate as generate_cli
    from markup2im.cli import train as train_cli
    from markup2im.scheduled_sampling import METHODS

    assert generate_cli.SAMPLERS == SAMPLERS
    assert train_cli.METHODS == METHODS


# -- speed options: bf16 autocast and channels-last ---------------------------------------------
# Measured on the trained tiny model (tests/tiny_model.py), 4 markups, CPU: bf16 against fp32
# differs by a mean of 0.001 and at most 0.009 on the [-1, 1] scale for every sampler; the
# tolerances below leave a 10x margin.
BF16_MEAN_TOLERANCE = 0.01
BF16_MAX_TOLERANCE = 0.1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bf16_sampling_stays_bounded_and_finite(model, sampler: str) -> None:
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    out = sample(model, markups, example_generators(1, [0, 1]), sampler=sampler,
                 num_inference_steps=6, precision="bf16")  # fmt: skip
    assert out.dtype == torch.float32 and out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bf16_sampling_is_close_to_fp32_on_a_trained_model(tiny_model_dir, sampler: str) -> None:
    from markup2im.pipeline import Markup2ImModel

    trained = Markup2ImModel.from_pretrained(tiny_model_dir).eval()
    markups = ["x^2", "a+b=c", r"\frac{1}{2}", "y_1"]
    steps = 50 if sampler == "ddpm" else 10
    run = lambda precision: sample(  # noqa: E731
        trained, markups, example_generators(1, range(4)), sampler=sampler,
        num_inference_steps=steps, precision=precision,
    )  # fmt: skip
    fp32, bf16 = run("fp32"), run("bf16")
    difference = (fp32 - bf16).abs()
    assert difference.mean() <= BF16_MEAN_TOLERANCE
    assert difference.max() <= BF16_MAX_TOLERANCE
    assert not torch.equal(fp32, bf16)  # bf16 really ran


def test_channels_last_gives_the_same_images(model_dir) -> None:
    from markup2im.pipeline import Markup2ImModel
    from markup2im.sampling import use_channels_last

    plain = Markup2ImModel.from_pretrained(model_dir).eval()
    nhwc = Markup2ImModel.from_pretrained(model_dir).eval()
    use_channels_last(nhwc)
    assert nhwc.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    markups = ["<table><tr><td>1</td></tr></table>", "<table></table>"]
    a = sample(plain, markups, example_generators(3, [0, 1]), sampler="ddim", num_inference_steps=4)
    b = sample(nhwc, markups, example_generators(3, [0, 1]), sampler="ddim",
               num_inference_steps=4, channels_last=True)  # fmt: skip
    assert (a - b).abs().max() <= 1e-4


def test_generate_in_bf16_and_unknown_precision(tmp_path, model_dir, dataset_dir) -> None:
    result = generate(
        model_dir, dataset_dir, tmp_path / "bf16", limit=2, sampler="dpmsolver++",
        num_inference_steps=3, device="cpu", precision="bf16", channels_last=True,
    )  # fmt: skip
    assert result.count == 2
    assert sorted(p.name for p in result.images_dir.iterdir()) == ["test_0.png", "test_1.png"]
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        generate(model_dir, dataset_dir, tmp_path / "x", limit=1, precision="fp16", device="cpu")
