"""The one place that decides how a compressed model runs: ``to_inference(model)`` and the graph a model exports.

``to_inference(model)``: for every method of the model's history, in order, the method's own step (its
``to_inference`` hook: fast kernel layers, in PyTorch and the package's kernels) and then the runtime step this
package owns for it (``RUNTIMES``): the ``int8`` QDQ graph on onnxruntime's int8 kernels, ``bf16`` on OpenVINO /
PyTorch bf16 / fp32 fallback, the binary methods' ``nn.Sequential`` blocks as native XNOR chains, a graph early exit
as the traced network cut at the exit (``GraphExit``). A method not
registered in this process (a user's own) has no step: skipped.

The check (``self_check``): a model carrying probes (``storage.probe_section``: a ``.ccz`` of a method in ``EXACT``)
runs them through its deployed form; below ``self_check.THRESHOLD`` top-1 agreement with the reference outputs
stored beside them, that engine is refused in one warning line and the model's exact form (``exact_form``) is
returned instead. ``metadata["probe_check"]`` of the returned model records the result either way.

``graph_hook(name)``: what ONNX graph stands for a model the method produced: ``GRAPHS`` (the int8 QDQ graph, a
bf16 model's float graph) or the method's own ``onnx_graph`` declaration (binary methods: the float equivalent),
else ``None`` (the float graph of the model itself).
"""
from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from cnncompress import methods
from cnncompress.deploy import self_check
from cnncompress.storage import probe_section as probe_store


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


def _int8_exact(model: nn.Module) -> nn.Module:
    from cnncompress.deploy.exact import int8_exact
    return int8_exact(model)


EXACT: dict[str, Callable[[nn.Module], nn.Module] | None] = {
    "int8": _int8_exact, "bf16": None, "fixed-point": None,
    "binaryconnect": None, "bwn": None, "xnor": None, "binact": None}
"""The methods whose deployed numerics depend on the engine or the CPU (their files carry probes), and the step
of their exact form: int8's fake-quant twin (``deploy.exact``); ``None``: the PyTorch module the method returned
(bf16 values in fp32 arithmetic, binary layers as sign() in fp32, fixed point simulated in fp32), neither the
method's own kernel step nor a runtime step."""


def _steps(model: nn.Module, exact: bool) -> nn.Module:
    methods.available()  # every built-in method registered
    for entry in getattr(model, "compression_history", []):
        method = methods.METHODS.get(entry["method"])
        if method is None:
            continue
        if exact and entry["method"] in EXACT:
            step = EXACT[entry["method"]]
            model = step(model) if step is not None else model
            continue
        if method.to_inference is not None:
            model = method.to_inference(model)
        runtime = RUNTIMES.get(entry["method"])
        if runtime is not None:
            model = runtime(model)
    return model


def checked_methods(model: nn.Module) -> list[str]:
    """The methods of ``model``'s history whose deployed numerics depend on the engine or CPU (``EXACT``)."""
    return [e["method"] for e in getattr(model, "compression_history", None) or [] if e.get("method") in EXACT]


def _exact_differs(model: nn.Module) -> bool:
    """Whether the exact form runs anything else than the deployed form (fixed point alone: it does not)."""
    names = checked_methods(model)
    return any(EXACT[n] is not None or n in RUNTIMES or getattr(methods.METHODS.get(n), "to_inference", None)
               for n in names)


def to_inference(model: nn.Module) -> nn.Module:
    """The deployed form of ``model``: every method's own step, then this package's runtime step for it (see the
    module docstring); the identity for a model with no history. A model carrying probes is checked on them
    (``self_check.check``): the exact form instead, with one warning line, where this engine disagrees."""
    probes = probe_store.of(model)
    if probes is None:
        return _steps(model, exact=False)
    methods.available()
    source = copy.deepcopy(model)  # the deployed steps may change ``model`` in place
    exact = (lambda: _steps(source, exact=True)) if _exact_differs(model) else None
    return self_check.check(_steps(model, exact=False), probes, exact, "+".join(checked_methods(model)) or "model")


def exact_form(model: nn.Module) -> nn.Module:
    """The reference form of ``model`` (a copy): the deployed steps, except that each method of ``EXACT`` takes
    its exact step. What a file's probe outputs are computed with."""
    return _steps(copy.deepcopy(model), exact=True).eval()


def graph_hook(name: str):
    """The ``(model) -> (graph bytes | None, note)`` hook of method ``name`` (``None``: export the float graph)."""
    if name in GRAPHS:
        return GRAPHS[name]
    method = methods.METHODS.get(name)
    return None if method is None else method.onnx_graph
