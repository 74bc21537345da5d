"""GPU tests of training the paper preset (``pytest -m gpu``; collected always, skipped without
CUDA): a few scheduled-sampling steps in fp32 and bf16 with no NaN, and a 2-process
``accelerate launch`` when two GPUs exist. Resume with EMA and process-count changes are in
tests/test_gpu_training.py."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpu_helpers import drawn_dataset, requires_cuda, stand_in_encoder_dir

pytestmark = requires_cuda

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def math_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu-data")
    return drawn_dataset(root / "math", 320, 64, {"train": 8, "validation": 1, "test": 1})


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return stand_in_encoder_dir(tmp_path_factory.mktemp("encoder"))


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: reset it around each run."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _losses(run_dir: Path) -> list[float]:
    with (run_dir / "train_log.csv").open(newline="", encoding="utf-8") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_paper_preset_trains_a_few_steps_without_nan(tmp_path, math_data, encoder_dir,
                                                     mixed_precision):  # fmt: skip
    from markup2im.training.config import TrainConfig
    from markup2im.training.trainer import train

    result = train(
        TrainConfig(
            dataset_dir=math_data,
            output_dir=tmp_path / "run",
            method="scheduled_sampling",
            model_preset="paper",
            encoder=str(encoder_dir),
            batch_size=4,
            max_steps=4,
            warmup_steps=1,
            ss_start=(1.0,),
            ss_end=(1.0,),
            mixed_precision=mixed_precision,
            checkpoint_every=1000,
            log_every=1,
        )  # fmt: skip
    )
    assert result.steps == 4 and math.isfinite(result.final_loss)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_process_accelerate_launch_on_gpus(tmp_path, math_data):
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "markup2im", "train", "--dataset-dir", str(math_data), "--output-dir", str(out),
        "--method", "scheduled_sampling", "--model-preset", "small", "--encoder", "offline",
        "--batch-size", "2", "--max-steps", "3", "--warmup-steps", "1",
        "--checkpoint-every", "2", "--mixed-precision", "bf16",
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert f"process {rank} of 2: finished 3 steps" in done.stderr, done.stderr[-4000:]
    assert (out / "model").is_dir()
    assert all(math.isfinite(v) for v in _losses(out))
