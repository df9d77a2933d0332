"""How an ``int8`` model runs: its QDQ graph on onnxruntime or OpenVINO int8 kernels, and the calibration of the
activation ranges on that graph (Berthelier 2018 §2.5: 8-bit integer inference).

``measure_ranges(model, images)``: onnxruntime's static quantiser measures min/max of every activation of the
model's exported float graph (``QUANTIZED_OPS`` nodes) on ``images``; the ``int8`` method stores them (the method
asks for them through ``methods.int8.RANGE_FINDER``, wired by ``cnncompress``: methods import no runtime).
``int8_onnx(model)`` rebuilds the QDQ graph from the stored weights and ranges (per-channel symmetric int8
weights, per-tensor asymmetric uint8 activations); onnxruntime fuses it into QLinearConv / QGemm int8 kernels
(``OrtInt8Model``), OpenVINO into its int8 convolutions (``to_openvino_int8``). onnxruntime's
``quantize_dynamic`` is not used: it is several times slower than fp32 for CNNs.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
import torch
from torch import nn

from cnncompress import hardware
from cnncompress.deploy import onnx_export
from cnncompress.deploy.onnx_export import quiet
from cnncompress.model_card import carry
from cnncompress.methods.int8 import DEFAULT_EXPORTER, OPSET, QUANTIZED_OPS, Int8Calibration, _Int8Weight

RUNTIME = "onnxruntime-int8-qdq"
GRAPH_NOTE = "int8 QDQ graph (onnxruntime runs QLinearConv/QGemm int8 kernels)"


def measure_ranges(model: nn.Module, images: torch.Tensor) -> dict:
    """``{graph tensor name: [min, max]}`` of the activations of ``model``'s float graph (exported with
    ``DEFAULT_EXPORTER`` at ``OPSET``) over ``images``: the ranges the ``int8`` method stores."""
    proto = onnx_export.export_proto(model, images[:1], DEFAULT_EXPORTER, OPSET)
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp:
        cache = os.path.join(tmp, "ranges.json")
        _quantize_static(proto, cache, _Reader(images))
        with open(cache) as handle:
            data = json.load(handle)["data"]
    return {name: [float(v["lowest"]["data"][0]), float(v["highest"]["data"][0])] for name, v in data.items()}


def _quantize_static(float_proto, cache_path: str, reader=None, nodes: list[str] | None = None,
                     reduce_range: bool = False):
    """Run onnxruntime's QDQ static quantiser; ranges come from ``reader`` or the cache file; ``nodes``: quantise
    only these nodes (None: every node of ``QUANTIZED_OPS``). Returns bytes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp, quiet():
        source, target = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(float_proto, source)
        quantize_static(source, target, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=cache_path, nodes_to_quantize=nodes)
        with open(target, "rb") as handle:
            return handle.read()


def quantize_graph(float_proto, images: torch.Tensor, batch: int = 32) -> bytes:
    """The int8 QDQ graph of a float ONNX proto whose input is ``input``, calibrated (min/max) on ``images`` in
    batches of ``batch``: the quantiser and settings ``int8`` deploys with (the latency model times one-layer
    graphs made this way)."""
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp:
        return _quantize_static(float_proto, os.path.join(tmp, "ranges.json"), _Reader(images, batch))


class _Reader:
    def __init__(self, images: torch.Tensor, batch: int = 32):
        self.batches = iter([images[i:i + batch].numpy() for i in range(0, len(images), batch)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


def graph_ranges(ranges: dict, inputs: list[str], margin: float) -> dict:
    """The ranges the QDQ graph quantises with: the stored (measured) ones, the graph inputs' widened by ``margin``
    steps of ``(hi - lo) / 255`` at each end (``Int8Calibration.input_margin``: ``methods.int8.INPUT_MARGIN`` for
    new calibrations, 0 for files written before). Why: images are a lattice (pixel / 255, normalised);
    when the measured range spans exactly 255 pixel steps with a half-step zero point (fer's (x / 255 - 0.5) / 0.5
    on faces that reach black and white: [-1, 1], step 2/255, zero point 127.5 -> 128), every pixel lies within
    float rounding of a tie, ``x / s + z = k + 0.5``, and which way it rounds depends on how an engine computes
    ``x / s`` (measured: OpenVINO and onnxruntime's unfused graph differ on 48 % of the input values, by 1 step).
    Widening by a quarter step moves every lattice point at least 0.0009 steps off a tie (over 100 times float32's
    rounding error at |x / s + z| <= 255), at the cost of 0.2 % coarser input steps."""
    widened = dict(ranges)
    for name in inputs:
        if name in widened:
            lo, hi = widened[name]
            widened[name] = [lo - margin * (hi - lo) / 255, hi + margin * (hi - lo) / 255]
    return widened


def _cache_json(ranges: dict) -> dict:
    def array(value):
        return {"data": [value], "dtype": "float32", "CLS": "numpy.array"}
    return {"CLS": "TensorsData", "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"},
            "smooth_quant": False,
            "data": {name: {"lowest": array(lo), "highest": array(hi), "CLS": "TensorData"}
                     for name, (lo, hi) in ranges.items()}}


class OrtInt8Model(nn.Module):
    """Runs an int8 QDQ ONNX model with onnxruntime (one session per thread count, created lazily).

    ``onnx_model`` holds the serialized graph; ``runtime`` names the engine for result tables.
    """

    runtime = RUNTIME

    def __init__(self, onnx_model: bytes):
        super().__init__()
        self.onnx_model = onnx_model
        self._sessions: dict[int, object] = {}

    def session(self, threads: int | None = None):
        threads = threads or torch.get_num_threads()
        if threads not in self._sessions:
            self._sessions[threads] = onnx_export.session(self.onnx_model, threads, spinning=False)
        return self._sessions[threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session().run(None, {"input": array})[0])

    def __deepcopy__(self, memo):
        return OrtInt8Model(self.onnx_model)


def reduce_range_here() -> bool:
    """Whether the int8 graph for this CPU quantises weights to 7 bits (onnxruntime's ``reduce_range``): on x86
    without VNNI the u8 x s8 int8 kernels (``vpmaddubsw``) add pairs of products in 16 bits and can saturate; with
    7-bit weights they cannot. Measured on a 2-core AMD EPYC (AVX2, no VNNI), int8 fer-minixception on the 100 LFW
    faces: the fused int8 graph agrees with its unfused QDQ twin (the same quantisation in fp32 arithmetic) on 99 %
    with 8-bit weights, 100 % with 7-bit."""
    return hardware.machine().lower() in ("x86_64", "amd64") and not hardware.has_vnni()


def scheme(reduce_range: bool) -> str:
    """The quantisation scheme in words (recorded with every int8 result)."""
    weights = "7-bit (reduce_range: no VNNI)" if reduce_range else "8-bit"
    return f"QDQ u8 activations per tensor x s8 weights per channel, {weights}"


def int8_onnx(model: nn.Module, reduce_range: bool | None = None) -> bytes:
    """The int8 QDQ ONNX graph of an ``int8``-applied model, rebuilt from its stored weights and ranges;
    ``reduce_range`` (7-bit weights) by default where this CPU needs it (``reduce_range_here``)."""
    reduce_range = reduce_range_here() if reduce_range is None else reduce_range
    calibration = getattr(model, "int8_calibration", None)
    if not isinstance(calibration, Int8Calibration):
        raise ValueError("model has no int8 calibration; apply the int8 method first")
    spec = getattr(model, "spec", None) or {}
    example = torch.zeros(1, spec.get("in_channels", 3), spec.get("input_size", 224), spec.get("input_size", 224))
    proto = onnx_export.export_proto(model, example, calibration.exporter, calibration.opset)
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp:
        cache = os.path.join(tmp, "ranges.json")
        with open(cache, "w") as handle:
            ranges = graph_ranges(calibration.ranges, [i.name for i in proto.graph.input], calibration.input_margin)
            json.dump(_cache_json(ranges), handle)
        return _quantize_static(proto, cache, nodes=int8_nodes(model, proto, example), reduce_range=reduce_range)


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def layer_calls(model: nn.Module, example: torch.Tensor, unique: bool = True) -> list[str]:
    """The paths of ``model``'s Conv2d/Linear layers in the order its forward calls them on ``example`` (every
    call, or with ``unique`` each layer once, at its first call)."""
    layers = {path: m for path, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, path=path: called.append(path)) for path, m in layers.items()]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(called)) if unique else called


def int8_nodes(model: nn.Module, proto, example: torch.Tensor) -> list[str] | None:
    """The graph nodes of the model's int8 layers when only some of its Conv2d/Linear layers are int8 (``layers``
    of ``apply_int8``); None when every Conv2d/Linear is int8: the whole graph is quantised (activations, pooling
    and all: the fastest int8 graph). The exporter writes one Conv/Gemm/MatMul node per layer call, in the order
    of the forward (weight names do not survive a BatchNorm folded into its conv), so the k-th layer called on
    ``example`` is the k-th such node; a count or weight size that disagrees is a ValueError, never a silently
    float (or int8) layer."""
    layers = {path: m for path, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if all(isinstance(m, _Int8Weight) for m in layers.values()):
        return None
    called = layer_calls(model, example, unique=False)
    nodes = [node for node in proto.graph.node if node.op_type in WEIGHTED_OPS]
    sizes = {init.name: math.prod(init.dims) for init in proto.graph.initializer}
    if len(nodes) != len(called) or any(len(node.input) < 2 or sizes.get(node.input[1]) != layers[path].weight.numel()
                                        for path, node in zip(called, nodes)):
        raise ValueError(f"int8 layers: the exported graph's {len(nodes)} Conv/Gemm nodes do not match the "
                         f"{len(called)} layer calls of the model; quantise every layer (layers='all')")
    return [node.name for path, node in zip(called, nodes) if isinstance(layers[path], _Int8Weight)]


OPENVINO_RUNTIME = "openvino-int8"


def int8_graph(model: nn.Module) -> tuple[bytes, str]:
    """The ``onnx_graph`` hook: the int8 QDQ graph (of the stored weights and ranges, or of an ``OrtInt8Model``
    or OpenVINO int8 model)."""
    graph = model.onnx_model if _runs_graph(model) else int8_onnx(model)
    return graph, GRAPH_NOTE


def _runs_graph(model: nn.Module) -> bool:
    return isinstance(model, OrtInt8Model) or getattr(model, "runtime", "") == OPENVINO_RUNTIME


def fake_quant_twin(graph: bytes, threads: int | None = None):
    """``run(x) -> logits`` of the QDQ ``graph`` with every QuantizeLinear / DequantizeLinear computed as itself in
    fp32 (onnxruntime with graph optimisation off: nothing is fused into int8 kernels). Its answers are the
    quantisation's alone; an int8 engine that disagrees with it loses accuracy in its own integer arithmetic."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {name: array})[0])
    return run


def to_openvino_int8(model: nn.Module) -> nn.Module:
    """The same int8 QDQ graph run by OpenVINO instead of onnxruntime (``engines.OpenVinoModel``, precision int8:
    the QDQ ops become OpenVINO's int8 convolutions / matmuls, VNNI or AMX-INT8; the float remainder stays f32).
    At 224x224 it measured 1.1-1.3x faster than onnxruntime's int8 at 1 thread (``benchmarks/bench_engines.py``);
    at 48x48 onnxruntime is faster (OpenVINO's fixed cost per call). Raises ``engines.OpenVinoUnavailable``
    when OpenVINO is not installed or cannot compile the graph."""
    from cnncompress.deploy.openvino import OpenVinoModel
    if getattr(model, "runtime", "") == OPENVINO_RUNTIME:
        return model
    graph = model.onnx_model if isinstance(model, OrtInt8Model) else int8_onnx(model)
    inference = OpenVinoModel(graph, "int8")
    inference.run()  # compile now: a graph OpenVINO cannot run fails here, not at the first call
    return carry(model, inference).eval()


def to_inference_int8(model: nn.Module) -> nn.Module:
    """Return the real int8 model (onnxruntime QDQ → QLinearConv/QGemm kernels), in the scheme this CPU needs
    (``reduce_range_here``); ``metadata["int8_scheme"]`` and ``["isa"]`` say which and where."""
    if isinstance(model, OrtInt8Model):
        return model
    reduce_range = reduce_range_here()
    return carry(model, OrtInt8Model(int8_onnx(model, reduce_range)), int8_scheme=scheme(reduce_range),
                 isa=" ".join(hardware.summary()["isa"])).eval()


