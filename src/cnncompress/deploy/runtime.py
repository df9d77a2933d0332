"""The one place that decides how a compressed model runs: ``to_inference(model)`` and the graph a model exports.

``to_inference(model)``: for every method of the model's history, in order, the method's own step (its
``to_inference`` hook: fast kernel layers, in PyTorch and the package's kernels) and then the runtime step this
package owns for it (``RUNTIMES``): the ``int8`` QDQ graph on onnxruntime's int8 kernels, ``bf16`` on OpenVINO /
PyTorch bf16 / fp32 fallback, the binary methods' ``nn.Sequential`` blocks as native XNOR chains, a graph early exit
as the traced network cut at the exit (``GraphExit``). A method not
registered in this process (a user's own) has no step: skipped.

``graph_hook(name)``: what ONNX graph stands for a model the method produced: ``GRAPHS`` (the int8 QDQ graph, a
bf16 model's float graph) or the method's own ``onnx_graph`` declaration (binary methods: the float equivalent),
else ``None`` (the float graph of the model itself).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from cnncompress import methods


def _int8_runtime(model: nn.Module) -> nn.Module:
    from cnncompress.deploy.int8 import to_inference_int8
    return to_inference_int8(model)


def _int8_graph(model: nn.Module):
    from cnncompress.deploy.int8 import int8_graph
    return int8_graph(model)


def _bf16_runtime(model: nn.Module) -> nn.Module:
    from cnncompress.deploy.bf16 import to_inference_bf16
    return to_inference_bf16(model)


def _bf16_graph(model: nn.Module):
    from cnncompress.deploy.bf16 import bf16_graph
    return bf16_graph(model)


def _native_xnor(model: nn.Module) -> nn.Module:
    from cnncompress.deploy.xnor import native_blocks
    return native_blocks(model).eval()


def _graph_exit(model: nn.Module) -> nn.Module:
    from cnncompress.methods.early_exit import graph_exit_runtime
    return graph_exit_runtime(model)


RUNTIMES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "int8": _int8_runtime, "bf16": _bf16_runtime, "early-exit": _graph_exit,
    "binaryconnect": _native_xnor, "bwn": _native_xnor, "xnor": _native_xnor, "binact": _native_xnor}
GRAPHS: dict[str, Callable] = {"int8": _int8_graph, "bf16": _bf16_graph}


def to_inference(model: nn.Module) -> nn.Module:
    """The deployed form of ``model``: every method's own step, then this package's runtime step for it (see the
    module docstring); the identity for a model with no history."""
    methods.available()  # every built-in method registered
    for entry in getattr(model, "compression_history", []):
        method = methods.METHODS.get(entry["method"])
        if method is None:
            continue
        if method.to_inference is not None:
            model = method.to_inference(model)
        runtime = RUNTIMES.get(entry["method"])
        if runtime is not None:
            model = runtime(model)
    return model


def graph_hook(name: str):
    """The ``(model) -> (graph bytes | None, note)`` hook of method ``name`` (``None``: export the float graph)."""
    if name in GRAPHS:
        return GRAPHS[name]
    method = methods.METHODS.get(name)
    return None if method is None else method.onnx_graph
