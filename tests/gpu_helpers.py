"""Shared pieces of the GPU tests (``pytest -m gpu``): a CUDA skip, data drawn without a
renderer (the GPU machine may lack LaTeX), and the paper-width stand-in encoder on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

# Collected always; without CUDA every test of a module carrying this reports "skipped".
requires_cuda = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def drawn_dataset(root: Path, width: int, height: int, counts: dict[str, int]) -> Path:
    """A math-like dataset directory of black rectangles on white and markups describing them."""
    import datasets

    from markup2im.data.datasets import DatasetInfo, write_dataset_info

    features = datasets.Features(
        {"formula": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits = {}
    for split, n in counts.items():
        rows = {"formula": [], "filename": [], "image": []}
        for i in range(n):
            rng = np.random.default_rng(1000 * len(split) + i)
            image = Image.new("L", (width, height), 255)
            draw = ImageDraw.Draw(image)
            parts = []
            for _ in range(int(rng.integers(1, 4))):
                x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
                w, h = int(rng.integers(4, width // 3)), int(rng.integers(4, height // 2))
                draw.rectangle([x, y, x + w, y + h], fill=0)
                parts.append(f"\\rect{{{x}}}{{{y}}}{{{w}}}{{{h}}}")
            rows["formula"].append(" ".join(parts))
            rows["filename"].append(f"{split}_{i}.png")
            rows["image"].append(image)
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("math", "formula", width, height, 1))
    return root


def stand_in_encoder_dir(root: Path, max_length: int = 1024) -> Path:
    """The random gpt-neo-125M-shaped encoder (768 wide) saved where ``--encoder DIR`` reads it."""
    from markup2im.models.encoder import MarkupEncoder

    path = root / "gpt-neo-125M-stand-in"
    if not path.is_dir():
        MarkupEncoder.build_stand_in(max_length).save_pretrained(path)
    return path


@pytest.fixture
def restore_cuda_settings():
    """Put TF32 and cuDNN settings back after a test that changes them."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
    )
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved[0]
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.backends.cudnn.benchmark = saved[2]
    torch.set_float32_matmul_precision(saved[3])
