"""GPU tests of sampling (``pytest -m gpu``; collected always, skipped without CUDA).

The paper preset at the math size (64x320) with the paper-width stand-in encoder (random
gpt-neo-125M-shaped, 768 wide: no download), untrained. The tolerances below are the ones
stated in :mod:`markup2im.sampling`: relative to the RMS of the output for one denoiser pass, in
mean absolute difference on the [-1, 1] pixel scale for whole sampling runs. They are estimates
from the precisions' mantissas (TF32 10 bits, bf16 8 bits), not yet measured on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_helpers import drawn_dataset, requires_cuda, restore_cuda_settings, stand_in_encoder_dir

from markup2im.cuda import configure_cuda
from markup2im.generate import generate
from markup2im.model import Markup2ImModel
from markup2im.names import SAMPLERS
from markup2im.sampling import example_generators, sample

pytestmark = [*requires_cuda, pytest.mark.usefixtures("restore_cuda_settings")]
__all__ = ["restore_cuda_settings"]  # a fixture, used through pytestmark

# One denoiser pass of an example alone vs inside a batch, max |difference| / RMS of the output.
FORWARD_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2}
# Whole DDIM runs, an example alone vs inside a batch: mean |difference| of the final pixels.
RUN_TOLERANCE = {"tf32": 1e-2, "bf16": 5e-2}
# bf16 against fp32 (TF32 off), one pass: max |difference| / RMS.
BF16_VS_FP32_TOLERANCE = 5e-2
MARKUPS = ["x", r"\frac{a}{b}", r"\int_0^1 f(x)\,dx = \sum_{n=0}^{\infty} a_n", "y_1 + y_2 = 3"]
STEPS = {"ddpm": 100, "ddim": 50, "dpmsolver++": 20}


@pytest.fixture(scope="module")
def paper_model(tmp_path_factory):
    encoder = stand_in_encoder_dir(tmp_path_factory.mktemp("encoder"))
    torch.manual_seed(0)
    model = Markup2ImModel.from_config(
        model_preset="paper", encoder=str(encoder), height=64, width=320, channels=1
    )
    return model.to("cuda").eval()


def _autocast(precision: str):
    configure_cuda(tf32=precision != "fp32")
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")


def _rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def test_paper_model_has_the_pinned_parameter_count(paper_model):
    assert sum(p.numel() for p in paper_model.denoiser.parameters()) == 207_565_057


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_on_cuda(paper_model, sampler, precision):
    configure_cuda(tf32=True)
    run = lambda: sample(  # noqa: E731
        paper_model, MARKUPS[:2], example_generators(0, [0, 1]), sampler=sampler,
        num_inference_steps=STEPS[sampler], precision="bf16" if precision == "bf16" else "fp32",
    )  # fmt: skip
    a = run()
    assert a.shape == (2, 1, 64, 320) and a.device.type == "cpu" and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.abs().max() <= 1 + 1e-5
    if sampler != "ddpm":  # the seed decides: a rerun is the same within the run tolerance
        assert (run() - a).abs().mean() <= RUN_TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_one_pass_is_batch_invariant_within_tolerance(paper_model, precision):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(MARKUPS), 1, 64, 320, generator=g).cuda()
    t = torch.randint(0, 1000, (len(MARKUPS),), generator=g).cuda()
    with torch.no_grad(), _autocast(precision):
        hidden, mask = paper_model.encode(MARKUPS)
        together = paper_model(x, t, hidden, mask).float()
        for i, markup in enumerate(MARKUPS):
            h, m = paper_model.encode([markup])
            alone = paper_model(x[i : i + 1], t[i : i + 1], h, m).float()
            error = (alone[0] - together[i]).abs().max().item() / _rms(together[i])
            assert error <= FORWARD_TOLERANCE[precision], (markup, error)


def test_bf16_pass_is_close_to_fp32(paper_model):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 64, 320, generator=g).cuda()
    t = torch.tensor([10, 700]).cuda()
    with torch.no_grad():
        configure_cuda(tf32=False)
        hidden, mask = paper_model.encode(MARKUPS[:2])
        fp32 = paper_model(x, t, hidden, mask).float()
        with _autocast("bf16"):
            bf16 = paper_model(x, t, hidden, mask).float()
    assert torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().max().item() / _rms(fp32) <= BF16_VS_FP32_TOLERANCE


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_sampling_is_batch_invariant_within_tolerance(paper_model, precision):
    configure_cuda(tf32=True)
    kwargs = {"sampler": "ddim", "num_inference_steps": 10,
              "precision": "bf16" if precision == "bf16" else "fp32"}  # fmt: skip
    together = sample(paper_model, MARKUPS, example_generators(5, range(4)), **kwargs)
    for i, markup in enumerate(MARKUPS):
        alone = sample(paper_model, [markup], example_generators(5, [i]), **kwargs)
        assert (alone[0] - together[i]).abs().mean() <= RUN_TOLERANCE[precision], markup


def test_generate_on_cuda_in_bf16_channels_last(tmp_path: Path):
    """generate() on CUDA: TF32 switched on, bf16 + channels-last images written."""
    data = drawn_dataset(tmp_path / "data", 64, 32, {"train": 2, "validation": 1, "test": 3})
    torch.manual_seed(0)
    Markup2ImModel.from_config(
        model_preset="tiny", encoder="offline", height=32, width=64, channels=1
    ).save_pretrained(tmp_path / "model")
    torch.backends.cuda.matmul.allow_tf32 = False
    result = generate(
        tmp_path / "model", data, tmp_path / "out", sampler="dpmsolver++", num_inference_steps=5,
        device="cuda", precision="bf16", channels_last=True, batch_size=2,
    )  # fmt: skip
    assert result.count == 3
    assert sorted(p.name for p in result.images_dir.iterdir()) == [
        "test_0.png", "test_1.png", "test_2.png",
    ]  # fmt: skip
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
