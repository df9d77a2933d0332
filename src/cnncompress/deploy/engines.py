"""The engines: a name, a precision, whether it can run here (and why not), and ``prepare`` -> a callable.

``prepare(source, input_shape, threads)`` takes a model (``nn.Module``) or a serialized ONNX graph (``bytes``)
and returns ``run(x: torch.Tensor) -> torch.Tensor``. Which graph an ONNX engine runs:

* fp32 and bf16 engines run the model's **float graph** (``onnx_export``: its float form; binary layers as their
  float equivalent). A graph with QuantizeLinear/DequantizeLinear nodes is refused: it would run int8 kernels.
* int8 engines run the **int8 QDQ graph** the model's methods supply (``export.method_graph``: the registry's
  ``onnx_graph`` hook, e.g. ``int8``); a model that supplies none cannot run on them.

A module that already wraps an ONNX graph (``OrtInt8Model``, ``OpenVinoModel``: attribute ``onnx_model``) hands
its graph over; the torch engines refuse it (they would time another engine inside). An engine that cannot run
a source raises ``EngineUnavailable`` (an ``InputError``: one line).
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cnncompress.errors import InputError
from cnncompress.deploy.export import is_quantized, method_graph
from cnncompress import hardware as cpu
from cnncompress.deploy import openvino

Run = Callable[[torch.Tensor], torch.Tensor]


class EngineUnavailable(InputError):
    """This engine cannot run here, or cannot run this model; the message is one line saying why."""


class Availability:
    """``bool(availability)``: whether the engine can run here; ``.reason``: one line when it cannot."""

    def __init__(self, reason: str | None = None):
        self.reason = reason or ""

    def __bool__(self) -> bool:
        return not self.reason

    def __repr__(self) -> str:
        return "available" if self else f"unavailable: {self.reason}"


@dataclass(frozen=True)
class Engine:
    """An inference engine: ``name``, ``precision`` (fp32 | bf16 | int8), ``runtime`` (torch | onnxruntime |
    openvino) and the functions behind ``available()`` and ``prepare()``."""

    name: str
    precision: str
    runtime: str
    description: str
    _missing: Callable[[], str | None]
    _prepare: Callable[[object, tuple, int | None], Run]

    def available(self) -> Availability:
        """Whether the engine can run on this machine (installed, CPU support); falsy with ``.reason`` if not."""
        return Availability(self._missing())

    def prepare(self, source, input_shape: tuple[int, ...], threads: int | None = None) -> Run:
        """``run(x) -> logits`` for ``source`` (an ``nn.Module`` or ONNX bytes) at ``input_shape`` and ``threads``
        (``None``: the engine's default). Raises ``EngineUnavailable`` (one line) when it cannot."""
        availability = self.available()
        if not availability:
            raise EngineUnavailable(f"engine {self.name}: {availability.reason}")
        try:
            return self._prepare(source, tuple(input_shape), threads)
        except openvino.OpenVinoUnavailable as error:
            raise EngineUnavailable(f"engine {self.name}: {error}") from error


def _wrapped_graph(source) -> bytes | None:
    graph = getattr(source, "onnx_model", None)
    return graph if isinstance(graph, (bytes, bytearray)) else None


def float_graph(source, input_shape: tuple[int, ...], engine: str = "") -> bytes:
    """The float ONNX graph of ``source`` (bytes as given, a wrapped graph, or the model's float export)."""
    graph = source if isinstance(source, (bytes, bytearray)) else _wrapped_graph(source)
    if graph is None:
        from cnncompress.deploy.onnx_export import export_file
        with tempfile.TemporaryDirectory(prefix="cnncompress-engine-") as tmp:
            path = export_file(copy.deepcopy(source).eval(), input_shape, os.path.join(tmp, "model.onnx"))
            return path.read_bytes()
    if is_quantized(graph):
        raise EngineUnavailable(f"engine {engine}: the graph is int8 QDQ; a float engine would run int8 kernels "
                                f"(use an int8 engine)")
    return bytes(graph)


def int8_graph(source, input_shape: tuple[int, ...], engine: str = "") -> bytes:
    """The int8 QDQ ONNX graph of ``source`` (bytes as given, a wrapped graph, or what its methods supply)."""
    graph = source if isinstance(source, (bytes, bytearray)) else _wrapped_graph(source)
    if graph is None:
        graph, _ = method_graph(source)
    if graph is None or not is_quantized(graph):
        raise EngineUnavailable(f"engine {engine}: the model supplies no int8 QDQ graph (apply the int8 method)")
    return bytes(graph)


def _torch_module(source, name: str) -> nn.Module:
    if not isinstance(source, nn.Module):
        raise EngineUnavailable(f"engine {name}: needs a torch model, not an ONNX graph")
    if _wrapped_graph(source) is not None:
        raise EngineUnavailable(f"engine {name}: the model runs another engine inside ({type(source).__name__})")
    return source


def _with_threads(call: Callable, threads: int | None) -> Run:
    """``call`` under ``torch.no_grad`` with torch's intra-op threads at ``threads`` for the call (restored after;
    nothing is switched when the count is already set, as ``fastest`` arranges)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        previous = torch.get_num_threads()
        if threads and threads != previous:
            torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                return call(x)
        finally:
            if threads and threads != previous:
                torch.set_num_threads(previous)
    return run


def _torch(source, input_shape, threads) -> Run:
    model = _torch_module(source, "torch").eval()
    return _with_threads(model, threads)


def _torch_channels_last(source, input_shape, threads) -> Run:
    model = copy.deepcopy(_torch_module(source, "torch-channels-last")).eval().to(memory_format=torch.channels_last)
    return _with_threads(lambda x: model(x.contiguous(memory_format=torch.channels_last)), threads)


def _torch_bf16(source, input_shape, threads) -> Run:
    from cnncompress.deploy.torch_bf16 import TorchBf16Model
    return _with_threads(TorchBf16Model(_torch_module(source, "torch-bf16")), threads)


ORT_SHARING = {"session.intra_op.allow_spinning": "0"}
"""onnxruntime session entries that keep its threads off the cores between calls (onnxruntime "Thread
management": by default the intra-op threads spin before blocking; "0": they block as soon as no work is left).
There is no inter-op pool to quiet: sessions run sequentially (``ORT_SEQUENTIAL``, the default) with one inter-op
thread. The intra-op thread count is always set (``threads``, or ``cpu.cores()`` for the engine's default):
left at 0, onnxruntime attaches one thread to each physical core."""


def _ort(graph: bytes, threads: int | None) -> Run:
    import numpy as np

    from cnncompress.deploy.onnx_export import session
    runner = session(graph, threads or cpu.cores(), spinning=False)  # ORT_SHARING
    name = runner.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(runner.run(None, {name: array})[0])
    run.session = runner  # what a test reads the applied options back from
    return run


def _openvino(precision: str, graph_of: Callable) -> Callable[[object, tuple, int | None], Run]:
    def prepare(source, input_shape, threads) -> Run:
        graph = graph_of(source, input_shape, f"openvino-{precision}")
        compiled = openvino.compile_graph(graph, precision, threads, input_shape)
        run = openvino.runner(compiled)
        run.compiled = compiled  # what a test reads the applied properties back from
        return run
    return prepare


def _bf16_cpu_missing() -> str | None:
    return None if cpu.has_bf16() else cpu.bf16_note()


def _always() -> str | None:
    return None


ENGINES: dict[str, Engine] = {engine.name: engine for engine in (
    Engine("torch", "fp32", "torch", "PyTorch eager, NCHW", _always, _torch),
    Engine("torch-channels-last", "fp32", "torch", "PyTorch eager, channels_last", _always, _torch_channels_last),
    Engine("torch-bf16", "bf16", "torch", "PyTorch eager in bf16 (oneDNN), channels_last", _bf16_cpu_missing,
           _torch_bf16),
    Engine("onnxruntime", "fp32", "onnxruntime", "onnxruntime CPU, the float graph", _always,
           lambda s, shape, t: _ort(float_graph(s, shape, "onnxruntime"), t)),
    Engine("onnxruntime-int8", "int8", "onnxruntime", "onnxruntime CPU, the int8 QDQ graph (QLinearConv/QGemm)",
           _always, lambda s, shape, t: _ort(int8_graph(s, shape, "onnxruntime-int8"), t)),
    Engine("openvino-fp32", "fp32", "openvino", "OpenVINO CPU, INFERENCE_PRECISION_HINT f32 (strict fp32)",
           lambda: openvino.precision_missing("fp32"), _openvino("fp32", float_graph)),
    Engine("openvino-bf16", "bf16", "openvino", "OpenVINO CPU, INFERENCE_PRECISION_HINT bf16",
           lambda: openvino.precision_missing("bf16"), _openvino("bf16", float_graph)),
    Engine("openvino-int8", "int8", "openvino", "OpenVINO CPU, the int8 QDQ graph (float remainder f32)",
           lambda: openvino.precision_missing("int8"), _openvino("int8", int8_graph)),
)}


PRECISION_OF_METHOD = {"int8": "int8", "bf16": "bf16"}  # every other method's model runs at fp32


def precision_of(method_names) -> str:
    """The precision a model made by these methods runs at: the lowest its pipeline asks for."""
    found = {PRECISION_OF_METHOD.get(name, "fp32") for name in method_names}
    return "int8" if "int8" in found else "bf16" if "bf16" in found else "fp32"


def model_precision(model) -> str:
    """The precision ``model`` is meant to run at: the lowest its compression history asks for
    (``precision_of``); without such a history, int8 when it carries int8 calibration or an ONNX graph of its own
    (a bf16 model carries its bf16 graph too: the history decides first)."""
    history = precision_of(step.get("method") for step in getattr(model, "compression_history", []) or [])
    if history != "fp32":
        return history
    if getattr(model, "int8_calibration", None) is not None or isinstance(getattr(model, "onnx_model", None), bytes):
        return "int8"
    return "fp32"


def names(precision: str | None = None) -> list[str]:
    """Engine names (of one ``precision`` when given), in registry order."""
    return [name for name, engine in ENGINES.items() if precision is None or engine.precision == precision]


def get(name: str) -> Engine:
    """The engine called ``name``; ``InputError`` (one line) for an unknown name."""
    if not isinstance(name, str) or name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}")
    return ENGINES[name]


def prepare(name: str, source, input_shape: tuple[int, ...], threads: int | None = None) -> Run:
    """``get(name).prepare(source, input_shape, threads)``."""
    return get(name).prepare(source, input_shape, threads)
