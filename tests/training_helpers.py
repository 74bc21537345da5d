"""Shared helpers of the training tests (tests/test_training_*.py and tests/test_gpu_training.py).

A tiny tables-like dataset of drawn rectangles, the tiny preset's run settings (:func:`tiny`),
the command lines of ``markup2im train`` and ``accelerate launch``, and readers of a run's log,
weights and checkpoints. The fixtures are imported by the modules that use them
(``from training_helpers import dataset_fixture  # noqa: F401``) and are module-scoped there;
their functions are named ``*_fixture`` so that a test's ``dataset_dir`` argument does not
shadow an import (pyflakes F811).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from markup2im.data.datasets import DatasetInfo, write_dataset_info
from markup2im.training.config import TrainConfig
from markup2im.training.trainer import train

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# `accelerate launch --cpu` starts a single process; --multi_gpu runs torchrun, and with
# ACCELERATE_USE_CPU=1 the processes form a gloo group on the CPU (DistributedType.MULTI_CPU)
CPU_PROCESSES = {**ENV, "ACCELERATE_USE_CPU": "1"}


def drawn_example(i: int) -> tuple[str, Image.Image]:
    """A 64x64 grayscale image of a few black rectangles and the markup that describes it."""
    rng = np.random.default_rng(i)
    image = Image.new("L", (64, 64), 255)
    draw = ImageDraw.Draw(image)
    cells = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(2, 40, size=2))
        w, h = (int(v) for v in rng.integers(4, 20, size=2))
        draw.rectangle([x, y, x + w, y + h], fill=0)
        cells.append(f"<td>{x},{y},{w},{h}</td>")
    return f"<table><tr>{''.join(cells)}</tr></table>", image


def build_dataset(root: Path, sizes: dict[str, int], bad: dict[int, object] | None = None) -> Path:
    """A tiny tables-like dataset directory; ``bad`` replaces train images by index."""
    features = datasets.Features(
        {"html": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits, offset = {}, 0
    for split, n in sizes.items():
        rows = {"html": [], "filename": [], "image": []}
        for i in range(n):
            markup, image = drawn_example(offset + i)
            if split == "train" and bad and i in bad:
                image = bad[i]
            rows["html"].append(markup)
            rows["filename"].append(f"{split}{i:03d}.png")
            rows["image"].append(image)
        offset += n
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("tables", "html", 64, 64, 1))
    return root


@pytest.fixture(scope="module", name="dataset_dir")
def dataset_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset (8 train, 2 validation, 3 test examples), built once per module."""
    return build_dataset(
        tmp_path_factory.mktemp("data") / "tables", {"train": 8, "validation": 2, "test": 3}
    )


def tiny(dataset: Path, output: Path, **overrides: object) -> TrainConfig:
    """A few steps of the tiny preset with scheduled sampling; ``overrides`` change any
    setting."""
    settings: dict = dict(
        dataset_dir=dataset,
        output_dir=output,
        method="scheduled_sampling",
        model_preset="tiny",
        encoder="offline",
        max_markup_length=64,
        batch_size=2,
        max_steps=4,
        warmup_steps=2,
        learning_rate=1e-3,
        checkpoint_every=2,
        ss_start=(0.5,),
        ss_end=(1.0,),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a ``train_log.csv``."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def model_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The denoiser weights of a saved model directory."""
    files = sorted((model_dir / "denoiser").glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    return weights


def assert_same_weights(a: Path, b: Path) -> None:
    """Two saved models have bit-identical denoiser weights."""
    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


def cli_train(dataset: Path, output: Path, *extra: str) -> list[str]:
    """The command line of :func:`tiny` (``[3:]`` are the ``markup2im`` arguments)."""
    return [
        sys.executable, "-m", "markup2im", "train", "--dataset-dir", str(dataset),
        "--output-dir", str(output), "--method", "scheduled_sampling", "--model-preset", "tiny",
        "--encoder", "offline", "--max-markup-length", "64", "--batch-size", "2",
        "--warmup-steps", "2", "--learning-rate", "1e-3", "--ss-start", "0.5", "--ss-end", "1.0",
        *extra,
    ]  # fmt: skip


def max_weight(checkpoint: Path) -> float:
    """The largest absolute weight of a checkpoint (huge after a divergence)."""
    return max(float(t.abs().max()) for t in load_file(checkpoint / "model.safetensors").values())


def accelerate_launch(processes: int, train_args: list[str], threads: int = 1) -> list[str]:
    """``accelerate launch`` of ``markup2im`` on ``processes`` processes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    flags = ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads)]  # fmt: skip
    if processes > 1:
        flags += ["--multi_gpu", "--main_process_port", "0"]  # port 0: a free one
    return [str(accelerate), "launch", *flags, "-m", "markup2im", *train_args]


def launch(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (10 minutes at most), capturing its output."""
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def checkpoint_keys(checkpoint: Path) -> list[str]:
    """The weight names of a checkpoint."""
    return list(load_file(checkpoint / "model.safetensors"))


# the settings of whole_run and of the runs that stop early and resume to its weights
SIGNAL_RUN = dict(max_steps=40, checkpoint_every=5, checkpoints_total_limit=2)


@pytest.fixture(scope="module", name="whole_run")
def whole_run_fixture(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> Path:
    """An uninterrupted run in this process (same settings as the signalled ones, one thread)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    train(tiny(dataset_dir, out, **SIGNAL_RUN))
    return out
