"""ONNX export with onnxruntime-friendly twins of layers whose default export is slow.

``torch.onnx.export`` writes ``F.local_response_norm`` as ~30 nodes (Shape/Gather/Concat/Reshape to rebuild the
5-D view at run time, an ``If`` per squeeze, and ``Pow``, which onnxruntime computes element by element); the
single ONNX ``LRN`` node is slower still in onnxruntime. ``OnnxLocalResponseNorm`` computes the same formula
with a dozen cheap static ops, which made VGG-S fp32 in onnxruntime 1.1-1.2x faster and its int8 QDQ graph
1.4x faster (the LRN stays float between the int8 convs). ``onnx_friendly`` swaps it in on a copy of the model;
every ONNX export of the toolkit (``measure.export_onnx``, the int8 graph, ``cnncompress export``) goes through it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class OnnxLocalResponseNorm(nn.Module):
    """LRN across channels, b_c = a_c / (k + alpha/n * sum_{c' in window(c)} a_c'^2)^beta (Krizhevsky et al. 2012),
    written as Mul, a (n,1,1) AveragePool over the channel axis (zero padding counted, as ``F.local_response_norm``),
    Mul/Add, and for beta = 0.75 (VGG-S, AlexNet) the power as sqrt(s)·sqrt(sqrt(s)) instead of ``Pow``.
    Reference: ``torch.nn.functional.local_response_norm`` (the tests compare the two)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    @classmethod
    def from_float(cls, lrn: nn.LocalResponseNorm) -> "OnnxLocalResponseNorm":
        return cls(lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        squares = (x * x).unsqueeze(1)  # (N, 1, C, H, W): channels become a pooling axis
        if self.size % 2:
            mean = F.avg_pool3d(squares, (self.size, 1, 1), stride=1, padding=(self.size // 2, 0, 0),
                                count_include_pad=True)
        else:  # asymmetric window, as torch pads it
            mean = F.avg_pool3d(F.pad(squares, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2)),
                                (self.size, 1, 1), stride=1)
        base = mean.squeeze(1) * self.alpha + self.k
        if self.beta == 0.75:
            root = torch.sqrt(base)
            return x / (root * torch.sqrt(root))
        return x / base.pow(self.beta)


class _LRNFunction(torch.autograd.Function):
    """``F.local_response_norm`` that the TorchScript exporter writes as one ONNX ``LRN`` node."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class OnnxLRNNode(nn.Module):
    """LRN exported as the single ONNX ``LRN`` node (same formula). Slower in onnxruntime than
    ``OnnxLocalResponseNorm`` (VGG-S int8 0.75 vs 0.61 ms); kept for int8 files calibrated on that graph."""

    def __init__(self, size: int, alpha: float, beta: float, k: float):
        super().__init__()
        self.args = (int(size), float(alpha), float(beta), float(k))

    @classmethod
    def from_float(cls, lrn: nn.LocalResponseNorm) -> "OnnxLRNNode":
        return cls(lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LRNFunction.apply(x, *self.args)


def onnx_friendly(model: nn.Module, twin: type = OnnxLocalResponseNorm) -> nn.Module:
    """``model`` itself when nothing needs swapping, else a copy with every ``nn.LocalResponseNorm`` (and
    subclass) replaced by ``twin.from_float(layer)`` (default ``OnnxLocalResponseNorm``)."""
    if not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules()):
        return model
    if isinstance(model, nn.LocalResponseNorm):
        return twin.from_float(model)
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.LocalResponseNorm):
                setattr(module, name, twin.from_float(child))
    return model
