"""``int8``: post-training static quantisation with calibration, run by real int8 kernels (onnxruntime QDQ).

Survey §2.5 (Berthelier 2018) / Rassadin & Savchenko 2017 §1: 8-bit integer inference. Weights are quantised
per output channel, symmetric (``s_c = max|w_c|/127``, int8); activations per tensor, asymmetric uint8 with
ranges (min/max) collected on ``num_calibration`` calibration images. ``to_inference`` exports the model to
ONNX and lets onnxruntime's ``quantize_static`` write a QDQ graph from the *stored* ranges (no data needed
again); onnxruntime then fuses QDQ into QLinearConv / QGemm int8 kernels (VNNI on this CPU). onnxruntime's
``quantize_dynamic`` is not used: it is several times slower than fp32 for CNNs.

What is stored: ``Int8Conv2d`` / ``Int8Linear`` weights with the ``int8`` codec (1 byte per weight + a
float32 scale and int8 zero point per channel), biases fp32, and the calibration ranges (a few hundred floats)
in the file's manifest. Before ``to_inference`` the PyTorch model computes in fp32 with the int8-grid weights
(activations not quantised): it is the reference twin that the int8 runtime approximates.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
import torch
from torch import nn

from .. import onnx_export, surgery
from ..layers import CompressedLayer, base_config, register_layer
from ..onnx_export import EXPORTERS, OPSET, quiet
from ..storage.codec_int8 import dequantize_per_channel, quantize_per_channel
from .calibration import model_shape, take
from .registry import MethodInfo, register

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Concat", "GlobalAveragePool", "AveragePool", "Flatten"]
RUNTIME = "onnxruntime-int8-qdq"
DEFAULT_EXPORTER = "torchscript-friendly"
"""How the float graph that the quantiser rewrites is exported (one of ``onnx_export.EXPORTERS``; stored with the
calibration ranges, which are keyed by its tensor names). ``torchscript-friendly``: LocalResponseNorm as a dozen
cheap static ops. The others remain for files calibrated with them."""
GRAPH_NOTE = "int8 QDQ graph (onnxruntime runs QLinearConv/QGemm int8 kernels)"


class _Int8Weight(CompressedLayer):
    """Mixin: the weight lies on the per-output-channel symmetric int8 grid and is stored with the int8 codec;
    the layer's configuration is its torch base's (``BASE``)."""

    BASE: type = nn.Module

    @classmethod
    def from_float(cls, layer: nn.Module) -> "_Int8Weight":
        quantized = cls(**base_config(layer, cls.BASE)).to(layer.weight.device)
        quantized.load_state_dict(layer.state_dict())
        quantized.snap_weight()
        return quantized

    def layer_config(self) -> dict:
        return base_config(self, self.BASE)

    def snap_weight(self) -> None:
        with torch.no_grad():
            q, scale, zero = quantize_per_channel(self.weight, 0, True)
            self.weight.copy_(dequantize_per_channel(q, scale, zero, 0))

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q int8, scale float32 per output channel)``."""
        q, scale, _ = quantize_per_channel(self.weight, 0, True)
        return q, scale

    def storage_codecs(self) -> dict:
        return {"weight": ("int8", {"axis": 0, "symmetric": True})}


@register_layer
class Int8Conv2d(_Int8Weight, nn.Conv2d):
    BASE = nn.Conv2d


@register_layer
class Int8Linear(_Int8Weight, nn.Linear):
    BASE = nn.Linear


INT8_LAYERS = {nn.Conv2d: Int8Conv2d, nn.Linear: Int8Linear}


@register_layer
class Int8Calibration(nn.Module):
    """Holds the activation ranges ``{onnx tensor name: [min, max]}`` measured at calibration (no forward use)."""

    def __init__(self, ranges: dict, exporter: str = DEFAULT_EXPORTER, opset: int = OPSET, num_images: int = 0):
        super().__init__()
        if not isinstance(ranges, dict) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2
                and all(isinstance(b, (int, float)) and math.isfinite(b) for b in v) for k, v in ranges.items()):
            raise ValueError("int8 calibration ranges must map tensor names to [min, max] floats")
        if exporter not in EXPORTERS or not isinstance(opset, int):
            raise ValueError(f"bad int8 exporter/opset {exporter!r}/{opset!r}")
        self.ranges = {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}
        self.exporter, self.opset, self.num_images = exporter, opset, int(num_images)

    @property
    def build_config(self) -> dict:
        """Constructor kwargs (what ``register_layer`` stores in the file's manifest)."""
        return {"ranges": self.ranges, "exporter": self.exporter, "opset": self.opset, "num_images": self.num_images}

    def layer_config(self) -> dict:
        return self.build_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x




NOISE = "noise"
"""``calibration="noise"``: calibrate on seeded N(0,1) images, for speed tests only (accuracy suffers); it must be
asked for by name, and the row's configuration then says so."""


def _calibration_images(model: nn.Module, calibration, count: int, seed: int) -> torch.Tensor:
    """The images the activation ranges are measured on: the run's data (see ``methods.calibration``), or seeded
    N(0,1) noise when ``calibration="noise"`` asks for it explicitly."""
    if isinstance(calibration, str) and calibration == NOISE:
        channels, size, _ = model_shape(model)
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(min(count, 64), channels or 3, size or 224, size or 224, generator=generator)
    if calibration is None:
        raise ValueError("int8 needs calibration images (calibration=: the run's data, a dataset spec, an "
                         "ImageDataset or images; calibration='noise' for speed tests only)")
    return take(model, calibration, count, seed, what="int8 calibration data")[0]


def _quantize_static(float_proto, cache_path: str, reader=None, nodes: list[str] | None = None):
    """Run onnxruntime's QDQ static quantiser; ranges come from ``reader`` or the cache file; ``nodes``: quantise
    only these nodes (None: every node of ``QUANTIZED_OPS``). Returns bytes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp, quiet():
        source, target = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(float_proto, source)
        quantize_static(source, target, reader, quant_format=QuantFormat.QDQ, per_channel=True,
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


def _to_int8(path: str, layer: nn.Module) -> nn.Module | None:
    """The int8 twin of a plain ``Conv2d`` / ``Linear``; other (already compressed) subclasses stay as they are."""
    twin = INT8_LAYERS.get(type(layer))
    return twin.from_float(layer) if twin else None


def apply_int8(model: nn.Module, calibration=None, num_calibration: int = 256, seed: int = 0,
               layers="all") -> nn.Module:
    """Snap conv/linear weights to per-channel int8 and calibrate activation ranges (min/max) for the int8 runtime.

    ``calibration``: the images the ranges are measured on (required): the run's data as handed over by the bench
    or ``cnncompress compress`` (``MethodInfo.data_option``), a dataset spec (its training split), an
    ``ImageDataset``, a tensor of images, an iterable of batches; or ``"noise"`` (seeded N(0,1), speed tests only).
    ``layers``: which Conv2d/Linear layers to quantise (``surgery.select``: ``"all"``, ``"conv"``, ``"linear"``, a
    path, a glob or a list); the others stay fp32 in the int8 graph.
    """
    if not isinstance(num_calibration, int) or num_calibration < 1:
        raise ValueError(f"num_calibration must be a positive integer, got {num_calibration!r}")
    model.eval()
    model = surgery.replace_layers(model, _to_int8, layers)
    images = _calibration_images(model, calibration, num_calibration, seed)
    proto = onnx_export.export_proto(model, images[:1], DEFAULT_EXPORTER, OPSET)
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp:
        cache = os.path.join(tmp, "ranges.json")
        _quantize_static(proto, cache, _Reader(images))
        with open(cache) as handle:
            data = json.load(handle)["data"]
    ranges = {name: [float(v["lowest"]["data"][0]), float(v["highest"]["data"][0])] for name, v in data.items()}
    model.int8_calibration = Int8Calibration(ranges, DEFAULT_EXPORTER, OPSET, len(images))
    return model


def _cache_json(calibration: Int8Calibration) -> dict:
    def array(value):
        return {"data": [value], "dtype": "float32", "CLS": "numpy.array"}
    return {"CLS": "TensorsData", "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"},
            "smooth_quant": False,
            "data": {name: {"lowest": array(lo), "highest": array(hi), "CLS": "TensorData"}
                     for name, (lo, hi) in calibration.ranges.items()}}


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
            self._sessions[threads] = onnx_export.session(self.onnx_model, threads)
        return self._sessions[threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session().run(None, {"input": array})[0])

    def __deepcopy__(self, memo):
        return OrtInt8Model(self.onnx_model)


def int8_onnx(model: nn.Module) -> bytes:
    """The int8 QDQ ONNX graph of an ``int8``-applied model, rebuilt from its stored weights and ranges."""
    calibration = getattr(model, "int8_calibration", None)
    if not isinstance(calibration, Int8Calibration):
        raise ValueError("model has no int8 calibration; apply the int8 method first")
    spec = getattr(model, "spec", None) or {}
    example = torch.zeros(1, spec.get("in_channels", 3), spec.get("input_size", 224), spec.get("input_size", 224))
    proto = onnx_export.export_proto(model, example, calibration.exporter, calibration.opset)
    with tempfile.TemporaryDirectory(prefix="cnncompress-int8-") as tmp:
        cache = os.path.join(tmp, "ranges.json")
        with open(cache, "w") as handle:
            json.dump(_cache_json(calibration), handle)
        return _quantize_static(proto, cache, nodes=int8_nodes(model, proto, example))


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


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
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, path=path: called.append(path)) for path, m in layers.items()]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
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


def to_openvino_int8(model: nn.Module) -> nn.Module:
    """The same int8 QDQ graph run by OpenVINO instead of onnxruntime (``engines.OpenVinoModel``, precision int8:
    the QDQ ops become OpenVINO's int8 convolutions / matmuls, VNNI or AMX-INT8; the float remainder stays f32).
    At 224x224 it measured 1.1-1.3x faster than onnxruntime's int8 at 1 thread (``benchmarks/bench_engines.py``);
    at 48x48 onnxruntime is faster (OpenVINO's fixed cost per call). Raises ``engines.OpenVinoUnavailable``
    when OpenVINO is not installed or cannot compile the graph."""
    from ..engines.openvino import OpenVinoModel
    if getattr(model, "runtime", "") == OPENVINO_RUNTIME:
        return model
    graph = model.onnx_model if isinstance(model, OrtInt8Model) else int8_onnx(model)
    inference = OpenVinoModel(graph, "int8")
    inference.run()  # compile now: a graph OpenVINO cannot run fails here, not at the first call
    for attribute in ("spec", "metadata", "compression_history"):
        if hasattr(model, attribute):
            setattr(inference, attribute, getattr(model, attribute))
    return inference.eval()


def to_inference_int8(model: nn.Module) -> nn.Module:
    """Return the real int8 model (onnxruntime QDQ → QLinearConv/QGemm kernels)."""
    if isinstance(model, OrtInt8Model):
        return model
    inference = OrtInt8Model(int8_onnx(model))
    for attribute in ("spec", "metadata", "compression_history"):
        if hasattr(model, attribute):
            setattr(inference, attribute, getattr(model, attribute))
    return inference.eval()


register(MethodInfo(
    name="int8", paper="Berthelier 2018 §2.5; Rassadin & Savchenko 2017 §1 (8-bit inference)",
    size="real", speed="real", family="reduced precision", data_option="calibration",
    description="post-training static int8: per-channel symmetric weights, uint8 activations calibrated by min/max "
                "on the run's training images; onnxruntime QDQ int8 kernels; .ccz stores int8 weights + scales",
    bench=({"model": "vgg_s", "config": {}, "finetune": 0, "label": "int8 (ORT QDQ)"},)),
    apply_int8, to_inference=to_inference_int8, onnx_graph=int8_graph)
