"""PyTorch bf16: a float model's copy with bf16 parameters in channels_last, run in oneDNN's bf16 kernels
(AVX512-BF16 or AMX where the CPU has them). Input cast to bf16, output cast back to float32. Layers that have
no bf16 CPU kernel (``LocalResponseNorm``: its 3-D average pool) run in fp32 between casts."""
from __future__ import annotations

import copy

import torch
from torch import nn

from cnncompress.surgery import replace_type

FP32_ONLY = (nn.LocalResponseNorm,)


class InFloat32(nn.Module):
    """Run ``inner`` in fp32 inside a bf16 network (cast in, cast back)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


class TorchBf16Model(nn.Module):
    """``inner`` in bf16 and channels_last; ``forward`` takes and returns float32 tensors."""

    runtime = "torch-bf16"
    precision = "bf16"

    def __init__(self, model: nn.Module):
        super().__init__()
        inner = copy.deepcopy(model).eval().to(torch.bfloat16).to(memory_format=torch.channels_last)
        self.inner = replace_type(inner, FP32_ONLY, InFloat32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x).float()
