"""Tests for markup2im.clip_score and the optional ``clip`` metric of ``markup2im evaluate``.

The CLIP model is a tiny one built from a config and saved to a local directory (model and image
processor), loaded through the same ``from_pretrained`` call as a hub model; nothing is
downloaded.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from markup2im.cli import main as cli_main
from markup2im.clip_score import ClipImageScorer, clip_similarities
from markup2im.errors import ModelError
from markup2im.figures.tables import metrics_table
from markup2im.metrics import evaluate_dirs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    text = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    directory = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    return directory


def _drawing(seed: int, size=(96, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, 20, size=2))
        draw.rectangle([x, y, x + int(rng.integers(5, 60)), y + int(rng.integers(3, 12))], fill=0)
    return image


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    """pred/ and gold/: a.png identical in both, b.png and c.png different."""
    root = tmp_path_factory.mktemp("pairs")
    pred, gold = root / "pred", root / "gold"
    pred.mkdir()
    gold.mkdir()
    for name, (p, g) in {"a.png": (1, 1), "b.png": (2, 3), "c.png": (4, 5)}.items():
        _drawing(p).save(pred / name)
        _drawing(g).save(gold / name)
    return pred, gold


def test_identical_images_have_similarity_one(clip_dir, pairs):
    pred, gold = pairs
    scorer = ClipImageScorer(str(clip_dir), device="cpu")
    same = [(gold / "b.png", gold / "b.png"), (pred / "a.png", gold / "a.png")]
    scores, blanks = clip_similarities(same, scorer)
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)
    assert np.all(blanks < 1.0 - 1e-6)  # a white page is not the drawing
    different, _ = clip_similarities([(pred / "b.png", gold / "b.png")], scorer)
    assert -1.0 <= different[0] < 1.0 - 1e-6


def test_scores_do_not_depend_on_the_batch_size(clip_dir, pairs):
    pred, gold = pairs
    scorer = ClipImageScorer(str(clip_dir), device="cpu")
    items = [(pred / n, gold / n) for n in ("a.png", "b.png", "c.png")]
    one, blank_one = clip_similarities(items, scorer, batch_size=1)
    three, blank_three = clip_similarities(items, scorer, batch_size=3)
    np.testing.assert_allclose(one, three, atol=1e-5)
    np.testing.assert_allclose(blank_one, blank_three, atol=1e-5)


def test_evaluate_with_clip_adds_a_column_and_a_summary_entry(clip_dir, pairs, tmp_path):
    pred, gold = pairs
    summary = evaluate_dirs(
        pred,
        gold,
        tmp_path / "metrics.csv",
        tmp_path / "summary.json",
        workers=1,
        clip_model=str(clip_dir),
        clip_batch_size=2,
        device="cpu",
    )
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["filename", "dtw", "dtw_shift", "ssim", "mse", "clip"]
    clip = {r["filename"]: float(r["clip"]) for r in rows}
    assert clip["a.png"] == pytest.approx(1.0, abs=1e-5)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["clip"]["count"] == 3
    assert written["clip"]["mean"] == pytest.approx(np.mean(list(clip.values())))
    assert written["blank"]["clip"]["count"] == 3
    assert written["clip_model"] == str(clip_dir)
    assert summary["clip"] == written["clip"]


def test_cli_clip_flag_and_metrics_table_column(clip_dir, pairs, tmp_path):
    pred, gold = pairs
    code = cli_main(
        ["evaluate", "--pred-dir", str(pred), "--gold-dir", str(gold), "--output",
         str(tmp_path / "with.csv"), "--summary", str(tmp_path / "with.json"), "--workers", "1",
         "--clip-model", str(clip_dir), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    code = cli_main(
        ["evaluate", "--pred-dir", str(pred), "--gold-dir", str(gold), "--output",
         str(tmp_path / "without.csv"), "--summary", str(tmp_path / "without.json"),
         "--workers", "1"]
    )  # fmt: skip
    assert code == 0
    assert "clip" not in json.loads((tmp_path / "without.json").read_text())
    rows = metrics_table(
        [
            ("m/released baseline", str(tmp_path / "with.json")),
            ("m/baseline", str(tmp_path / "without.json")),
        ],
        tmp_path / "table.csv",
        tmp_path / "table.html",
    )
    assert rows[0]["clip"] and rows[1]["clip"] == ""
    assert rows[0]["method"] == "released baseline"
    assert "CLIP \u2191" in (tmp_path / "table.html").read_text(encoding="utf-8")
    # without any CLIP summary the table is as before
    plain = metrics_table([("m/baseline", str(tmp_path / "without.json"))], tmp_path / "plain.csv")
    assert "clip" not in plain[0]


def test_a_directory_without_a_clip_model_is_refused(tmp_path):
    with pytest.raises(ModelError, match="cannot load a CLIP model from directory"):
        ClipImageScorer(str(tmp_path), device="cpu")


def test_without_clip_nothing_of_clip_is_loaded(pairs, tmp_path):
    """evaluate without --clip-model imports neither transformers nor the CLIP module."""
    pred, gold = pairs
    code = (
        "import sys\n"
        "from markup2im.cli import main\n"
        f"assert main(['evaluate', '--pred-dir', {str(pred)!r}, '--gold-dir', {str(gold)!r},"
        f" '--output', {str(tmp_path / 'm.csv')!r}, '--workers', '1']) == 0\n"
        "loaded = [m for m in ('transformers', 'markup2im.clip_score') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (tmp_path / "m.csv").read_text().splitlines()[0]
    assert header == "filename,dtw,dtw_shift,ssim,mse"
