"""GPU checks of the trainer (``pytest -m gpu``; collected always, skipped without CUDA).

What only a CUDA run shows: the paper preset trains in fp32 and bf16, an EMA resumes onto the
GPU, the step never waits for the device, the speed options (compile, channels-last, encoder
cache, data workers) train, and with two GPUs a checkpoint moves between process counts. The
same logic has CPU tests in tests/test_training_*.py (runs: tests/test_training_trainer.py).
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import (
    ENV,
    accelerate_launch,
    build_dataset,
    checkpoint_keys,
    cli_train,
    launch,
    model_weights,
    read_log,
    tiny,
)

from markup2im.training.checkpoints import list_checkpoints
from markup2im.training.trainer import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(
        tmp_path_factory.mktemp("data") / "tables", {"train": 16, "validation": 2, "test": 2}
    )


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: reset it around each test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def finite_run(out: Path) -> None:
    rows = read_log(out / "train_log.csv")
    assert rows and all(math.isfinite(float(r["loss"])) for r in rows)
    assert all(torch.isfinite(w).all() for w in model_weights(out / "model").values())


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_paper_preset_trains_without_nan(tmp_path: Path, dataset_dir: Path, precision: str) -> None:
    out = tmp_path / precision
    result = train(
        tiny(dataset_dir, out, model_preset="paper", batch_size=4, max_steps=3,
             mixed_precision=precision, checkpoint_every=100, log_every=1)
    )  # fmt: skip
    assert result.steps == 3 and math.isfinite(result.final_loss)
    finite_run(out)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_resume_with_ema_on_the_gpu(tmp_path: Path, dataset_dir: Path) -> None:
    """The EMA's shadow weights come back onto the GPU (they used to stay on the CPU and the
    first EMA step after a resume failed)."""
    settings = dict(ema=True, ema_decay=0.7, max_steps=4, checkpoint_every=2,
                    checkpoints_total_limit=None)  # fmt: skip
    whole = tmp_path / "whole"
    train(tiny(dataset_dir, whole, **settings))
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints" / "checkpoint-2", cut / "checkpoints" / "checkpoint-2")
    train(tiny(dataset_dir, cut, resume="latest", **settings))
    a, b = model_weights(whole / "model"), model_weights(cut / "model")
    for key in a:  # cuDNN is not bit-deterministic
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_the_step_never_waits_for_the_gpu() -> None:
    """Noise, forward, backward, clipping and the fused AdamW step of a baseline step queue
    work without one host sync (CUDA sync debug mode turns any into an error)."""
    from markup2im.diffusion import NoiseSchedule
    from markup2im.model import Markup2ImModel
    from markup2im.scheduled_sampling import ScheduledSamplingConfig, step_loss
    from markup2im.training.methods.scheduled_sampling import draw_step
    from markup2im.training.step import adamw_options, encode_tokens, noise_generator

    device = torch.device("cuda")
    model = Markup2ImModel.from_config(model_preset="tiny", encoder="offline", height=64,
                                       width=64, channels=1, max_markup_length=64).to(device)  # fmt: skip
    params = list(model.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, **adamw_options(params))
    assert optimizer.defaults.get("fused") is True
    schedule = NoiseSchedule.from_scheduler_config(model.scheduler_config)
    baseline = ScheduledSamplingConfig.baseline()
    ids, mask = model.encoder.tokenize(["<td>1</td>", "<tr><td>2</td></tr>"])
    hidden, mask = encode_tokens(model.encoder, ids.pin_memory(), mask.pin_memory())
    x0 = (torch.rand(2, 1, 64, 64) * 2 - 1).pin_memory().to(device, non_blocking=True)

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.denoiser(x, t, hidden, mask)

    def step(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        inputs = draw_step(eps_model, schedule, baseline, x0, 0.5, generator,
                           noise_generator(seed, device))  # fmt: skip
        step_loss(eps_model, inputs).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # lazy initialisation (cuDNN autotuning, the optimizer state) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(1)
        step(2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_compile_bf16_channels_last_and_encoder_cache_train(
    tmp_path: Path, dataset_dir: Path
) -> None:
    out = tmp_path / "fast"
    result = train(
        tiny(dataset_dir, out, method="baseline", ss_start=None, ss_end=None, batch_size=4,
             max_steps=None, epochs=2, mixed_precision="bf16", compile=True, channels_last=True,
             cache_encoder=True, checkpoint_every=100, log_every=4)
    )  # fmt: skip
    assert result.steps == 8
    finite_run(out)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_data_workers_on_the_gpu(tmp_path: Path, dataset_dir: Path) -> None:
    out = tmp_path / "workers"
    result = train(tiny(dataset_dir, out, num_workers=2, max_steps=None, epochs=2,
                        checkpoint_every=100))  # fmt: skip
    assert result.steps == 16
    finite_run(out)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_checkpoint_resumes_on_one(tmp_path: Path, dataset_dir: Path) -> None:
    import time

    out = tmp_path / "ddp"
    steps = ["--max-steps", "4", "--checkpoint-every", "2"]
    env = {**ENV, "SLURM_JOB_ID": "77", "SLURM_JOB_END_TIME": str(int(time.time()) + 60)}
    done = launch(
        accelerate_launch(2, cli_train(dataset_dir, out, *steps, "--walltime-margin", "600")[3:]),
        env,
    )
    assert len(re.findall(r"markup2im train: stopping \d+ s .* at step 2;", done.stderr)) == 2, (
        done.stderr[-4000:]
    )
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert not [k for k in checkpoint_keys(checkpoint) if k.startswith("module.")]
    env.pop("SLURM_JOB_END_TIME")
    env.pop("SLURM_JOB_ID")
    done = launch(accelerate_launch(1, cli_train(dataset_dir, out, *steps, "--resume", "latest")
                                    [3:]), env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert [s for s, _ in list_checkpoints(out / "checkpoints")][-1] == 4
    assert (out / "model").is_dir()
