"""Tests of ``markup2im generate`` (markup2im.generate) with an untrained tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inference_helpers import drawn_example, pixels, save_untrained_model, write_tables_dataset
from PIL import Image

from markup2im.cli import main as cli_main
from markup2im.errors import ConfigError, DataError
from markup2im.generate import generate
from markup2im.model import Markup2ImModel
from markup2im.names import SAMPLERS
from markup2im.sampling import make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tables_dataset(tmp_path_factory.mktemp("data") / "tables")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Markup2ImModel:
    return Markup2ImModel.from_pretrained(model_dir, device="cpu").eval()


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


def test_eps_scale_from_the_command_line_reaches_the_images(
    tmp_path: Path, model_dir: Path, dataset_dir: Path
) -> None:
    """--eps-scale 1 draws the plain images; --eps-scale TEXT draws what the API draws with
    eps_scale=TEXT, which is not the plain image."""
    common = dict(limit=2, sampler="ddim", num_inference_steps=3, seed=2, device="cpu")
    generate(model_dir, dataset_dir, tmp_path / "plain", **common)
    generate(model_dir, dataset_dir, tmp_path / "api", eps_scale="k=1e-4,b=1.02", **common)
    for name, flag in (("one", "1"), ("cli", "k=1e-4,b=1.02")):
        code = cli_main(
            ["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
             "--output-dir", str(tmp_path / name), "--limit", "2", "--sampler", "ddim",
             "--num-inference-steps", "3", "--seed", "2", "--device", "cpu",
             "--eps-scale", flag]
        )  # fmt: skip
        assert code == 0
    for image in ("test_0.png", "test_1.png"):
        plain = pixels(tmp_path / "plain" / "images" / image)
        np.testing.assert_array_equal(pixels(tmp_path / "one" / "images" / image), plain)
        scaled = pixels(tmp_path / "cli" / "images" / image)
        np.testing.assert_array_equal(scaled, pixels(tmp_path / "api" / "images" / image))
        assert not np.array_equal(scaled, plain)


def test_guidance_scale_from_the_command_line_reaches_the_images(
    tmp_path: Path, model_dir: Path, dataset_dir: Path
) -> None:
    """--guidance-scale W draws what the API draws with guidance_scale=W, with eps scaling on
    top; --guidance-scale -1 is a usage error."""
    common = dict(limit=2, sampler="ddim", num_inference_steps=3, seed=2, device="cpu")
    generate(model_dir, dataset_dir, tmp_path / "plain", **common)
    generate(model_dir, dataset_dir, tmp_path / "api", guidance_scale=2.5, eps_scale=1.01,
             **common)  # fmt: skip
    code = cli_main(
        ["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
         "--output-dir", str(tmp_path / "cli"), "--limit", "2", "--sampler", "ddim",
         "--num-inference-steps", "3", "--seed", "2", "--device", "cpu",
         "--guidance-scale", "2.5", "--eps-scale", "1.01"]
    )  # fmt: skip
    assert code == 0
    for image in ("test_0.png", "test_1.png"):
        guided = pixels(tmp_path / "cli" / "images" / image)
        np.testing.assert_array_equal(guided, pixels(tmp_path / "api" / "images" / image))
        assert not np.array_equal(guided, pixels(tmp_path / "plain" / "images" / image))
    with pytest.raises(SystemExit) as info:
        cli_main(["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
                  "--output-dir", str(tmp_path / "o"), "--guidance-scale=-1"])  # fmt: skip
    assert info.value.code == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("0", "argument --eps-scale: must be > 0, got 0"),
        ("k=-0.01,b=1", "argument --eps-scale: lambda_t = -0.01 t + 1 must be > 0"),
        ("huge", "argument --eps-scale: expected a number or k=...,b=..., got 'huge'"),
        ("k=1e-5,c=1", "argument --eps-scale: unknown keys ['c']; use k and b"),
    ],
)
def test_bad_eps_scale_flag_is_a_usage_error(
    flag: str, message: str, tmp_path: Path, model_dir: Path, dataset_dir: Path, capsys
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(
            ["generate", "--model-dir", str(model_dir), "--dataset-dir", str(dataset_dir),
             "--output-dir", str(tmp_path / "o"), f"--eps-scale={flag}"]
        )  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_generate_in_bf16_and_unknown_precision(tmp_path, model_dir, dataset_dir) -> None:
    result = generate(
        model_dir, dataset_dir, tmp_path / "bf16", limit=2, sampler="dpmsolver++",
        num_inference_steps=3, device="cpu", precision="bf16", channels_last=True,
    )  # fmt: skip
    assert result.count == 2
    assert sorted(p.name for p in result.images_dir.iterdir()) == ["test_0.png", "test_1.png"]
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        generate(model_dir, dataset_dir, tmp_path / "x", limit=1, precision="fp16", device="cpu")


def test_a_model_of_another_size_is_refused(tmp_path: Path, dataset_dir: Path) -> None:
    Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=32, width=64, channels=1
    ).save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match=r"makes 64x32x1 images but dataset .* has 64x64x1"):
        generate(tmp_path / "model", dataset_dir, tmp_path / "o", limit=1, device="cpu")
    assert not (tmp_path / "o" / "images").exists()


def test_bad_settings_are_refused_before_anything_loads(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    for settings, message in (
        ({"sampler": "euler"}, "unknown sampler"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"limit": -1}, "limit and frames_every >= 0"),
        ({"precision": "fp16"}, "unknown precision"),
        ({"eps_scale": 0}, "eps_scale: must be > 0"),
        ({"eps_scale": "1.0.1"}, "eps_scale: expected a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            generate(missing, missing, tmp_path / "o", device="cpu", **settings)
