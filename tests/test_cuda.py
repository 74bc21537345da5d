"""configure_cuda: TF32 and cuDNN autotuning on CUDA, nothing on CPU."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import restore_cuda_settings

from markup2im.cuda import configure_cuda

__all__ = ["restore_cuda_settings"]  # a fixture


def test_no_op_without_cuda(monkeypatch, restore_cuda_settings):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    configure_cuda()
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.benchmark is False
    assert torch.get_float32_matmul_precision() == "highest"


def test_sets_tf32_and_benchmark_when_cuda(monkeypatch, restore_cuda_settings):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    configure_cuda()
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cudnn.benchmark is True
    assert torch.get_float32_matmul_precision() == "high"
    configure_cuda(tf32=False, cudnn_benchmark=False)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.benchmark is False
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.gpu
def test_configure_cuda_on_gpu(restore_cuda_settings):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    configure_cuda()
    a = torch.randn(256, 256, device="cuda")
    assert torch.isfinite(a @ a).all()
