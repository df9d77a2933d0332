"""``int8``: post-training static quantisation with calibration, run by real int8 kernels (onnxruntime QDQ).

Survey §2.5 (Berthelier 2018) / Rassadin & Savchenko 2017 §1: 8-bit integer inference. Weights are quantised
per output channel, symmetric (``s_c = max|w_c|/127``, int8); activations per tensor, asymmetric uint8 with
ranges (min/max) collected on ``num_calibration`` calibration images, measured on the graph the model deploys
as (``deploy.int8``). Deployment (``deploy.to_inference``) writes a QDQ graph from the *stored* ranges (no data
needed again) and runs it on onnxruntime's or OpenVINO's int8 kernels.

What is stored: ``Int8Conv2d`` / ``Int8Linear`` weights with the ``int8`` codec (1 byte per weight + a
float32 scale and int8 zero point per channel), biases fp32, and the calibration ranges (a few hundred floats)
in the file's manifest. Before ``to_inference`` the PyTorch model computes in fp32 with the int8-grid weights
(activations not quantised): it is the reference twin that the int8 runtime approximates.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cnncompress import surgery
from cnncompress.layers import CompressedLayer, base_config, register_layer
from cnncompress.storage.codec_int8 import dequantize_per_channel, quantize_per_channel
from cnncompress.methods.calibration import model_shape, take
from cnncompress.methods.registry import MethodInfo, register

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Concat", "GlobalAveragePool", "AveragePool", "Flatten"]
EXPORTERS = ("torchscript-friendly", "torchscript", "torchscript-lrn", "dynamo")
"""The ONNX exporters a stored calibration may name: ``deploy.onnx_export.EXPORTERS`` (a test keeps them equal)."""
OPSET = 17
"""The ONNX opset new calibrations are measured at (``deploy.onnx_export.OPSET``)."""
DEFAULT_EXPORTER = "torchscript-friendly"
"""How the float graph that the quantiser rewrites is exported (one of ``onnx_export.EXPORTERS``; stored with the
calibration ranges, which are keyed by its tensor names). ``torchscript-friendly``: LocalResponseNorm as a dozen
cheap static ops. The others remain for files calibrated with them."""


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


NUM_CALIBRATION = 256
"""Calibration images used by default (the first of the run's training images)."""

FASTEST = "fastest"
"""``layers=fastest``: the layers after the float prefix measured fastest deployed on this CPU; resolved above the
method (``pipeline.compress``, ``deploy.int8_split``), where an engine may be timed."""

INPUT_MARGIN = 0.25
"""Quantisation steps by which new calibrations widen the graph input's range at each end when the QDQ graph is
built (``deploy.int8.graph_ranges`` says why: pixel lattices on rounding ties)."""


@register_layer
class Int8Calibration(nn.Module):
    """Holds the activation ranges ``{onnx tensor name: [min, max]}`` measured at calibration (no forward use) and
    ``input_margin``, the steps the graph input's range is widened by when the graph is built (0 for files written
    before it existed: their graph, and the probes recorded on it, stay as they were)."""

    def __init__(self, ranges: dict, exporter: str = DEFAULT_EXPORTER, opset: int = OPSET, num_images: int = 0,
                 input_margin: float = 0.0):
        super().__init__()
        if not isinstance(ranges, dict) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2
                and all(isinstance(b, (int, float)) and math.isfinite(b) for b in v) for k, v in ranges.items()):
            raise ValueError("int8 calibration ranges must map tensor names to [min, max] floats")
        if exporter not in EXPORTERS or not isinstance(opset, int):
            raise ValueError(f"bad int8 exporter/opset {exporter!r}/{opset!r}")
        if not isinstance(input_margin, (int, float)) or not 0 <= input_margin < 1:
            raise ValueError(f"int8 input_margin must be in [0, 1) steps, got {input_margin!r}")
        self.ranges = {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}
        self.exporter, self.opset, self.num_images = exporter, opset, int(num_images)
        self.input_margin = float(input_margin)

    @property
    def build_config(self) -> dict:
        """Constructor kwargs (what ``register_layer`` stores in the file's manifest)."""
        return {"ranges": self.ranges, "exporter": self.exporter, "opset": self.opset, "num_images": self.num_images,
                "input_margin": self.input_margin}

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


def _to_int8(path: str, layer: nn.Module) -> nn.Module | None:
    """The int8 twin of a plain ``Conv2d`` / ``Linear``; other (already compressed) subclasses stay as they are."""
    twin = INT8_LAYERS.get(type(layer))
    return twin.from_float(layer) if twin else None


def apply_int8(model: nn.Module, calibration=None, num_calibration: int = NUM_CALIBRATION, seed: int = 0,
               layers="all") -> nn.Module:
    """Snap conv/linear weights to per-channel int8 and calibrate activation ranges (min/max) for the int8 runtime.

    ``calibration``: the images the ranges are measured on (required): the run's data as handed over by the bench
    or ``cnncompress compress`` (``MethodInfo.data_option``), a dataset spec (its training split), an
    ``ImageDataset``, a tensor of images, an iterable of batches; or ``"noise"`` (seeded N(0,1), speed tests only).
    ``layers``: which Conv2d/Linear layers to quantise (``surgery.select``: ``"all"``, ``"conv"``, ``"linear"``, a
    path, a glob or a list); the others stay fp32 in the int8 graph. ``"fastest"`` (the float prefix measured
    fastest on this CPU) is resolved above the method, where a runtime may be timed: ``cnncompress compress``
    (``pipeline.compress``) or ``deploy.int8_split.fastest_split``.
    """
    if layers == FASTEST:
        raise ValueError("int8 layers='fastest' is measured on an engine: use pipeline.compress / cnncompress "
                         "compress, or pass deploy.int8_split.fastest_split(model, images).layers")
    if not isinstance(num_calibration, int) or num_calibration < 1:
        raise ValueError(f"num_calibration must be a positive integer, got {num_calibration!r}")
    model.eval()
    model = surgery.replace_layers(model, _to_int8, layers)
    images = _calibration_images(model, calibration, num_calibration, seed)
    if not RANGE_FINDER:
        raise RuntimeError("int8 has no range finder: import cnncompress (it wires deploy.int8.measure_ranges)")
    ranges = RANGE_FINDER[0](model, images)
    model.int8_calibration = Int8Calibration(ranges, DEFAULT_EXPORTER, OPSET, len(images), INPUT_MARGIN)
    return model


def check_calibrated(model: nn.Module) -> nn.Module:
    """The method's own deployment step: the model must carry its calibration (``deploy`` then builds the int8
    graph from it and picks the engine); returns the model unchanged."""
    if not isinstance(getattr(model, "int8_calibration", None), Int8Calibration) and \
            not isinstance(getattr(model, "onnx_model", None), bytes):
        raise ValueError("model has no int8 calibration; apply the int8 method first")
    return model


RANGE_FINDER: list = []
"""``[measure(model, images) -> {graph tensor: [min, max]}]``: measures the activation ranges on the graph the
model deploys as. That graph belongs to ``deploy`` (``deploy.int8.measure_ranges``, wired when ``cnncompress`` is
imported), so this method imports no runtime."""


register(MethodInfo(
    name="int8", paper="Berthelier 2018 §2.5; Rassadin & Savchenko 2017 §1 (8-bit inference)",
    size="real", speed="real", family="reduced precision", data_option="calibration",
    handles="every Conv2d/Linear (its QDQ graph: any ONNX-exportable structure)",
    description="post-training static int8: per-channel symmetric weights, uint8 activations calibrated by min/max "
                "on the run's training images; int8 kernels (deploy: onnxruntime / OpenVINO QDQ); .ccz stores int8 "
                "weights + scales",
    bench=({"model": "vgg_s", "config": {}, "finetune": 0, "label": "int8 (ORT QDQ)"},)),
    apply_int8, to_inference=check_calibrated)
