"""CUDA speed settings shared by training, sampling and the benchmarks.

The original enabled TF32 matmuls; on Ampere and newer GPUs TF32 runs fp32 matmuls and convolutions on tensor
cores with a 10-bit mantissa (about 1e-3 relative error per product), which diffusion training tolerates.
``cudnn.benchmark`` lets cuDNN time its convolution algorithms once per input shape and keep the fastest;
our shapes are fixed per preset, so the one-off cost is paid once. Neither setting changes anything on CPU.
"""

from __future__ import annotations

import torch

__all__ = ["configure_cuda"]


def configure_cuda(tf32: bool = True, cudnn_benchmark: bool = True) -> None:
    """Enable (or disable) TF32 matmuls/convolutions and cuDNN autotuning; a no-op without CUDA.

    The settings are process-global. ``tf32=False`` restores full fp32 precision (``"highest"``), e.g. for
    a bitwise comparison with a CPU run.
    """
    if not torch.cuda.is_available():
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = cudnn_benchmark
