"""Float layers of the XNOR inference graph: the LRN and ceil-mode max-pools around the binary convs.

After binarization the binary convs take a few ms, and torch's NCHW ``LocalResponseNorm`` (built from
``avg_pool3d``) and ceil-mode ``MaxPool2d`` dominate VGG-S inference (tens of ms at 224). ``to_inference`` of the
XNOR methods swaps them for these drop-in subclasses with the same maths (C loops in ``kernels/bitpack.py``;
tests compare them with torch's own layers). The benchmark also times the fp32 model with the same swap, so
the speed-up due to binarization alone is visible.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import storage
from ..kernels import bitpack
from ..storage.architecture import LAYERS, set_submodule


class FastLocalResponseNorm(nn.LocalResponseNorm):
    """LRN across channels: b_c = a_c (k + alpha/n sum_{window} a^2)^-beta (Krizhevsky 2012)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return bitpack.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


class FastMaxPool2d(nn.MaxPool2d):
    """Unpadded max-pool (ceil mode as in Caffe) with a plain C loop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or x.dim() != 4:
            return super().forward(x)
        return bitpack.max_pool2d(x, self.kernel_size, self.stride, self.ceil_mode)


storage.register_layer(FastLocalResponseNorm, LAYERS["LocalResponseNorm"][1])
storage.register_layer(FastMaxPool2d, LAYERS["MaxPool2d"][1])


def fast_float_layers(model: nn.Module) -> nn.Module:
    """Swap plain LRN and unpadded integer-size MaxPool2d layers of ``model`` for the fast subclasses (in place)."""
    for name, layer in list(model.named_modules()):
        if type(layer) is nn.LocalResponseNorm:
            fast = FastLocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        elif (type(layer) is nn.MaxPool2d and isinstance(layer.kernel_size, int) and isinstance(layer.stride, int)
              and layer.padding == 0 and layer.dilation == 1 and not layer.return_indices):
            fast = FastMaxPool2d(layer.kernel_size, layer.stride, ceil_mode=layer.ceil_mode)
        else:
            continue
        model = set_submodule(model, name, fast)
    return model
