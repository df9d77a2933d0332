"""Predicted batch-1 latency of a compressed model on an engine: an additive per-layer cost model, measured.

For a candidate model ``c`` of the original ``o`` that will run on engine ``E`` (precision fp32 or int8)::

    predicted_E(c) = c_E · [call_E + (T_F(o) - call_F - Σ_l t_F(o_l)) · V(c)/V(o) + Σ_l t_E(c_l)]

- ``T_F(o)``: the original's whole-model median ms on ``F``, the fp32 engine of ``E``'s runtime (``onnxruntime``
  for ``onnxruntime-int8``, ``openvino-fp32`` for ``openvino-int8``), timed in the same interleaved race as the
  candidate it is checked against (``race``: same load for both).
- ``call_E``: the engine's cost of one call (a pass-through graph at the input shape); what is left of ``T_F(o)``
  after the call and the layers is the work between layers (activations, pooling, normalisation), scaled by
  ``V(c)/V(o)``, the ratio of the layers' output elements (filter pruning shrinks it).
- ``t_E(layer)``: that one layer alone, a one-node ONNX graph (``Conv`` or ``Gemm``) at the layer's real input
  shape, timed on ``E`` at batch 1 (median); for an int8 engine the graph is quantised by onnxruntime exactly as
  the ``int8`` method does (QDQ, per-channel int8 weights, uint8 activations), so the layer's real int8 kernel
  at its real channel counts is what is timed (a pruned width that is not a multiple of the SIMD width costs what
  it costs).
- ``c_E``: the correction learnt from whole models measured on ``E`` (geometric mean of measured / predicted; 1
  until one is): the cost model corrected by measuring candidate whole models. It matters for int8, where the
  work between layers also runs in int8 and the layers' (de)quantisation is shared along a chain (measured on
  the bench VGG-S: uncorrected int8 predictions 36-79 % high, corrected ones within 15 %).

A layer replaced by a small network of its own (a CP / Tucker decomposition's factor convs) is timed as one graph,
that network at the layer's input shape (``block_ms``): its factors timed one by one each paid the per-graph
overhead again (predictions of a CP candidate 15-38 % high on the bench VGG-S).

Settings that keep a layer's shape and precision (magnitude pruning and k-means sharing on a dense engine) cost the
same as the original layer, so such a candidate is predicted at the original's speed: a smaller file, not a
faster forward. The model is additive by design: it ignores that int8 layers in a chain share their
(de)quantisation, which ``r_E`` absorbs once one int8 model has been measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnncompress import deploy
from cnncompress.measure import alternating

FLOAT_TWIN = {"onnxruntime-int8": "onnxruntime", "openvino-int8": "openvino-fp32", "openvino-bf16": "openvino-fp32",
              "torch-bf16": "torch-channels-last"}
RUNS = 20


@dataclass(frozen=True)
class LayerShape:
    """What a layer's time depends on: its kind, weight shape, conv geometry and input shape (batch 1)."""

    kind: str  # "conv" | "linear"
    weight: tuple[int, ...]
    input: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True

    @property
    def output_elements(self) -> int:
        """Elements of the layer's output at batch 1 (what the activations, pooling and normalisation after it
        work through)."""
        if self.kind == "linear":
            return self.weight[0]
        size = 1
        for n, k, s, p, d in zip(self.input[2:], self.weight[2:], self.stride, self.padding, self.dilation):
            size *= (n + 2 * p - d * (k - 1) - 1) // s + 1
        return self.weight[0] * size


def layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerShape]:
    """Every plain ``Conv2d`` / ``Linear`` of ``model`` with the input it sees at batch 1 (forward hooks)."""
    found, hooks = {}, []
    for path, module in model.named_modules():
        if type(module) in (nn.Conv2d, nn.Linear):
            def hook(module, inputs, output, path=path):
                found[path] = _shape_of(module, tuple(inputs[0].shape))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape[1:]))
    finally:
        for handle in hooks:
            handle.remove()
    return found


def _shape_of(module: nn.Module, seen: tuple[int, ...]) -> LayerShape:
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return LayerShape("linear", tuple(module.weight.shape), (1, module.in_features), bias=bias)
    padding = module.padding
    if isinstance(padding, str):  # "valid": none; "same": what keeps the size at stride 1 (odd kernels)
        padding = tuple(0 if padding == "valid" else d * (k - 1) // 2
                        for k, d in zip(module.kernel_size, module.dilation))
    return LayerShape("conv", tuple(module.weight.shape), (1, *seen[1:]), tuple(module.stride),
                      tuple(padding), tuple(module.dilation), module.groups, bias)


def layer_graph(shape: LayerShape, precision: str = "fp32") -> bytes:
    """The one-node ONNX graph of ``shape`` (random weights), quantised to int8 QDQ when ``precision`` is int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(shape.weight).astype(np.float32) * 0.1
    out = shape.weight[0]
    inputs, initializers = ["input", "weight"], [numpy_helper.from_array(weight, "weight")]
    if shape.bias:
        inputs.append("bias")
        initializers.append(numpy_helper.from_array(np.zeros(out, np.float32), "bias"))
    if shape.kind == "conv":
        pads = list(shape.padding) * 2
        node = helper.make_node("Conv", inputs, ["output"], kernel_shape=list(shape.weight[2:]),
                                strides=list(shape.stride), pads=pads, dilations=list(shape.dilation),
                                group=shape.groups)
    else:
        node = helper.make_node("Gemm", inputs, ["output"], transB=1)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                list(shape.input))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if precision == "int8":
        return _quantized(model, shape)
    return model.SerializeToString()


def layer_module(shape: LayerShape) -> nn.Module:
    """A torch layer of ``shape`` (random weights) for the PyTorch engines."""
    if shape.kind == "linear":
        return nn.Linear(shape.weight[1], shape.weight[0], bias=shape.bias).eval()
    return nn.Conv2d(shape.weight[1] * shape.groups, shape.weight[0], tuple(shape.weight[2:]), shape.stride,
                     shape.padding, shape.dilation, shape.groups, shape.bias).eval()


def identity_graph(input_shape: tuple[int, ...]) -> bytes:
    """A graph that returns its input (plus zero, so that the engine runs one kernel): the cost of a call."""
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("Add", ["input", "zero"], ["output"])
    graph = helper.make_graph([node], "call", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               list(input_shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _quantized(model, shape: LayerShape) -> bytes:
    """The ``int8`` method's quantiser (``deploy.int8.quantize_graph``), calibrated on four uniform-noise inputs."""
    from cnncompress.deploy.int8 import quantize_graph
    noise = torch.from_numpy(np.random.default_rng(1).random((4, *shape.input[1:]), np.float32))
    return quantize_graph(model, noise, batch=1)


class LatencyModel:
    """``predict(shapes, engine, original_ms)`` from the original's layer shapes and per-layer times (module
    docstring); every one-layer time measured is kept (``layer_ms``), so a shape is timed once per engine."""

    def __init__(self, original: nn.Module, input_shape: tuple[int, ...], threads: int | None = 1):
        self.input_shape, self.threads = tuple(input_shape), threads
        self.original = original.eval()
        self.shapes = layer_shapes(original, input_shape)
        self.ratios: dict[str, list[float]] = {}
        self.calls: dict[str, float] = {}
        self.cache: dict[tuple[LayerShape, str], float] = {}
        self.blocks: dict[tuple[str, str, str], float] = {}

    def layer_ms(self, shape: LayerShape, engine: str) -> float:
        """The layer's own ms on ``engine``: the one-layer graph's median minus that of a graph that only passes
        its input through (the engine's cost per call, which the whole model pays once, not per layer)."""
        key = (shape, engine)
        if key not in self.cache:
            precision = deploy.get(engine).precision
            source = layer_module(shape) if engine.startswith("torch") else \
                layer_graph(shape, "int8" if precision == "int8" else "fp32")
            timed_on = "torch" if engine == "torch-channels-last" and shape.kind == "linear" else engine  # 2-D input
            self.cache[key] = self._minus_call(timed_on, source, shape.input)
        return self.cache[key]

    def block_ms(self, path: str, block: nn.Module, engine: str) -> float:
        """ms of ``block``, the deployed network that replaces the layer at ``path`` (a decomposition's factor
        convs), timed as one graph on ``engine`` at the layer's input shape, the engine's call cost taken off."""
        key = (path, engine, repr(block))
        if key not in self.blocks:
            self.blocks[key] = self._minus_call(engine, block.eval(), self.shapes[path].input)
        return self.blocks[key]

    def _minus_call(self, engine: str, source, input_shape: tuple[int, ...]) -> float:
        """Median ms of ``source`` on ``engine`` minus that of a graph that only passes its input through on the
        fp32 twin (the engine's cost per call), the two interleaved; at least 0."""
        float_engine = FLOAT_TWIN.get(engine, engine)  # an int8 engine runs no float graph: its twin does
        passthrough = nn.Identity() if float_engine.startswith("torch") else identity_graph(input_shape)
        runs = {"layer": deploy.prepare(engine, source, input_shape, self.threads),
                "call": deploy.prepare(float_engine, passthrough, input_shape, self.threads)}
        x = torch.rand(*input_shape)
        times = alternating({k: (lambda run=run: run(x)) for k, run in runs.items()}, RUNS, block=3, warmup=2)
        return max(0.0, times["layer"] - times["call"])

    def race(self, candidate: nn.Module, names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
        """Median ms of the deployed ``candidate`` on each engine of ``names`` that can run it, and of the
        original on their fp32 twins, all timed in one interleaved race (``deploy.race``), so that a prediction
        made from the original's time and the measurement it is checked against see the same load.
        Returns ``(candidate ms per engine, original ms per fp32 engine)``."""
        twins = sorted({FLOAT_TWIN.get(name, name) for name in names})
        times, _ = deploy.race({"candidate": (candidate, names), "original": (self.original, twins)},
                                self.input_shape, self.threads, RUNS)
        return ({n: t for (who, n), t in times.items() if who == "candidate"},
                {n: t for (who, n), t in times.items() if who == "original"})

    def call_ms(self, engine: str) -> float:
        """The engine's cost of one call at the model's input shape (a pass-through graph), measured once."""
        float_engine = FLOAT_TWIN.get(engine, engine)
        if float_engine not in self.calls:
            passthrough = nn.Identity() if float_engine.startswith("torch") else identity_graph(self.input_shape)
            run = deploy.prepare(float_engine, passthrough, self.input_shape, self.threads)
            x = torch.rand(*self.input_shape)
            self.calls[float_engine] = alternating({"call": lambda: run(x)}, RUNS, block=3, warmup=2)["call"]
        return self.calls[float_engine]

    def predict(self, shapes: dict[str, LayerShape], engine: str, original_ms: float,
                float_layers: frozenset = frozenset(), blocks: dict[str, nn.Module] | None = None) -> float:
        """Predicted median ms on ``engine`` of a model whose Conv/Linear layers are ``shapes`` (``layer_shapes``
        of its float stage), given ``original_ms``: the original's ms on the fp32 twin of ``engine``.
        ``float_layers``: paths of ``shapes`` that stay fp32 in an int8 / bf16 graph (timed on the fp32 twin);
        ``blocks``: paths of ``shapes`` deployed as a network of their own (timed as one graph, ``block_ms``)."""
        float_engine = FLOAT_TWIN.get(engine, engine)
        blocks = blocks or {}
        call = self.call_ms(engine)
        between = max(0.0, original_ms - call - sum(self.layer_ms(s, float_engine) for s in self.shapes.values()))
        volume = sum(s.output_elements for s in shapes.values()) / sum(s.output_elements for s in self.shapes.values())
        inside = sum(self.block_ms(p, blocks[p], engine) if p in blocks else
                     self.layer_ms(s, float_engine if p in float_layers else engine) for p, s in shapes.items())
        return (call + between * volume + inside) * self.correction(engine)

    def correction(self, engine: str) -> float:
        """``c_E``: the geometric mean of measured / uncorrected-predicted over the whole models seen on ``engine``
        (1 before any)."""
        ratios = self.ratios.get(engine, [])
        return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else 1.0

    def observe(self, predicted: float, measured: float, engine: str) -> None:
        """Remember how far a whole model measured on ``engine`` was from its (corrected) ``predicted`` ms: later
        predictions there are corrected by it."""
        if predicted > 0 and measured > 0:
            self.ratios.setdefault(engine, []).append(measured / (predicted / self.correction(engine)))
