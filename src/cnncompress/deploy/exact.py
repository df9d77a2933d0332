"""The exact form of an ``int8`` model: its QDQ graph with every QuantizeLinear / DequantizeLinear computed as
itself in fp32 (``int8.fake_quant_twin``: onnxruntime, graph optimisation off, nothing fused into int8 kernels).

Its outputs are the quantisation's alone, the same on every CPU up to fp32 rounding: the reference a ``.ccz``'s
probes store, and what ``deploy.to_inference`` runs when the int8 engine here disagrees with them. The graph is the
canonical 8-bit one (``int8_onnx(model, reduce_range=False)``), whatever scheme this CPU deploys with.
"""
from __future__ import annotations

import torch
from torch import nn

from cnncompress.deploy.int8 import OrtInt8Model, fake_quant_twin, int8_onnx
from cnncompress.model_card import carry

RUNTIME = "onnxruntime-fake-quant"


class FakeQuantModel(nn.Module):
    """An int8 QDQ graph run as its fake-quant twin (``onnx_model``: the graph; created lazily per thread count)."""

    runtime = RUNTIME

    def __init__(self, onnx_model: bytes):
        super().__init__()
        self.onnx_model = onnx_model
        self._runs: dict[int, object] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if threads not in self._runs:
            self._runs[threads] = fake_quant_twin(self.onnx_model, threads)
        return self._runs[threads](x)

    def __deepcopy__(self, memo):
        return carry(self, FakeQuantModel(self.onnx_model))


def int8_exact(model: nn.Module) -> nn.Module:
    """The exact form of an ``int8``-applied model (or of an ``OrtInt8Model``, from the graph it runs)."""
    if isinstance(model, FakeQuantModel):
        return model
    graph = model.onnx_model if isinstance(model, OrtInt8Model) else int8_onnx(model, reduce_range=False)
    return carry(model, FakeQuantModel(graph)).eval()
