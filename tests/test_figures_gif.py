"""Denoising and comparison GIFs, read back frame by frame; the ``gif`` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from figures_helpers import frame, gif_frames, write_frames
from PIL import Image

from markup2im.cli import main
from markup2im.errors import ConfigError, DataError
from markup2im.figures import gif, images


def test_list_frames_in_step_order(tmp_path: Path) -> None:
    directory = tmp_path / "frames"
    directory.mkdir()
    for step in (10, 2, 0, 100):
        frame(step).save(directory / f"step_{step}.png")
    (directory / "notes.txt").write_text("ignored")
    assert [p.name for p in gif.list_frames(directory)] == [
        "step_0.png",
        "step_2.png",
        "step_10.png",
        "step_100.png",
    ]
    paths = gif.list_frames(directory)
    assert gif.select_frames(paths, 3) == [paths[0], paths[3]]
    assert gif.select_frames(paths, 2) == [paths[0], paths[2], paths[3]]
    with pytest.raises(ConfigError, match="every"):
        gif.select_frames(paths, 0)


def test_denoise_gif_frames_loop_and_final_hold(tmp_path: Path) -> None:
    frames_dir = write_frames(tmp_path / "frames" / "a", list(range(10)))
    out = tmp_path / "gifs" / "a.gif"
    count = gif.denoise_gif(frames_dir, out, every=4, frame_ms=50, final_hold_ms=1500)
    frames, durations, loop = gif_frames(out)
    assert count == len(frames) == 4  # steps 0, 4, 8 and the final 9
    assert loop == 0  # forever
    assert durations == [50, 50, 50, 1500]
    assert frames[0].shape == (192, 192)  # 64x64 enlarged 3x
    expected_last = np.asarray(images.enlarge(frame(9), 3))
    np.testing.assert_array_equal(frames[-1], expected_last)
    assert not list(out.parent.glob(".*"))


def test_denoise_gif_rgb_and_wide_images_keep_size(tmp_path: Path) -> None:
    frames_dir = write_frames(tmp_path / "f", [0, 1, 2], size=(320, 64), mode="RGB")
    out = tmp_path / "wide.gif"
    assert gif.denoise_gif(frames_dir, out) == 3
    with Image.open(out) as image:
        assert image.size == (320, 64)


def test_denoise_gif_missing_or_empty_frames(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        gif.denoise_gif(tmp_path / "nowhere", tmp_path / "x.gif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no frame images"):
        gif.denoise_gif(tmp_path / "empty", tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_compare_gif_layout_labels_and_hold(tmp_path: Path) -> None:
    gold = tmp_path / "gold.png"
    frame(20).save(gold)
    base = write_frames(tmp_path / "baseline", [0, 1, 2, 3, 4])
    ss = write_frames(tmp_path / "ss", [0, 2, 4])
    out = tmp_path / "compare.gif"
    count = gif.compare_gif(
        gold, [("baseline", base), ("scheduled sampling", ss)], out, final_hold_ms=900
    )
    frames, durations, loop = gif_frames(out)
    assert count == len(frames) == 5
    assert loop == 0 and durations[-1] == 900 and durations[0] == 80
    band = images.label_band_height()
    panel, pad = 192, images.PAD
    assert frames[0].shape == (band + panel + pad, 3 * panel + 4 * pad)
    for k in range(3):  # each panel has its label: dark pixels above it
        left = pad + k * (panel + pad)
        assert (frames[0][:band, left : left + panel] < 128).any()
    assert (frames[0][band:, :] < 255).any() and band >= 10
    # a label wider than its panel is shortened instead of running into the next one
    narrow = tmp_path / "narrow.gif"
    gif.compare_gif(gold, [("x" * 200, base), ("b", ss)], narrow, scale=1)
    with Image.open(narrow) as image:
        labels = np.asarray(image.convert("L"))[:band]
    second, third = pad + 64 + pad, pad + 2 * (64 + pad)
    assert (labels[:, second : second + 64] < 128).any()
    assert not (labels[:, third : third + 20] < 128).any()  # "b" sits in the middle

    def panel_of(image: np.ndarray, k: int) -> np.ndarray:
        left = pad + k * (panel + pad)
        return image[band : band + panel, left : left + panel]

    gold_big = np.asarray(images.enlarge(frame(20), 3))
    for image in frames:
        np.testing.assert_array_equal(panel_of(image, 0), gold_big)
    np.testing.assert_array_equal(panel_of(frames[1], 1), np.asarray(images.enlarge(frame(1), 3)))
    # the shorter run holds its final frame
    np.testing.assert_array_equal(panel_of(frames[4], 2), np.asarray(images.enlarge(frame(4), 3)))


def test_compare_gif_size_mismatch_names_directory(tmp_path: Path) -> None:
    gold = tmp_path / "gold.png"
    frame(0, size=(32, 32)).save(gold)
    run = write_frames(tmp_path / "run", [0])
    with pytest.raises(DataError, match="run"):
        gif.compare_gif(gold, [("baseline", run)], tmp_path / "c.gif")


def test_gif_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frames = write_frames(tmp_path / "frames", list(range(6)))
    command = ["gif", "denoise", "--frames-dir", str(frames), "--output", str(tmp_path / "d.gif")]
    assert main([*command, "--every", "2", "--final-hold-ms", "700"]) == 0
    assert gif_frames(tmp_path / "d.gif")[1] == [80, 80, 80, 700]
    compare = ["gif", "compare", "--gold", str(frames / "step_0005.png"), "--frames", f"a={frames}"]
    assert main([*compare, "--output", str(tmp_path / "c.gif"), "--scale", "1"]) == 0
    nothing = ["--frames-dir", str(tmp_path / "nothing"), "--output", str(tmp_path / "n.gif")]
    assert main(["gif", "denoise", *nothing]) == 2
    assert "nothing" in capsys.readouterr().err
