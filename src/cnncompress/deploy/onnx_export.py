"""The one place the toolkit turns a model into ONNX, with onnxruntime-friendly twins of layers whose default
export is slow.

``export_bytes`` / ``export_proto`` / ``export_file`` run ``torch.onnx.export`` (input ``input`` and output
``logits``, dynamic batch) after ``onnx_friendly``; ``export_file`` falls back to the dynamo exporter when the
TorchScript one fails; ``untie_initializers`` gives every Conv/Gemm its own constant weight and bias (the int8
quantiser needs that); ``write_graph`` writes a serialized graph; ``session`` opens one in onnxruntime.
Methods with a graph of their own (int8: its QDQ graph) supply it through the ``onnx_graph`` hook of their
registration (``methods.registry``); ``cnncompress.deploy.export`` asks the hooks and falls back to ``export_file``.

LRN. ``torch.onnx.export`` writes ``F.local_response_norm`` as ~30 nodes (Shape/Gather/Concat/Reshape to rebuild the
5-D view at run time, an ``If`` per squeeze, and ``Pow``, which onnxruntime computes element by element); the
single ONNX ``LRN`` node is slower still in onnxruntime. ``OnnxLocalResponseNorm`` computes the same formula
with a dozen cheap static ops, which made VGG-S fp32 in onnxruntime 1.1-1.2x faster and its int8 QDQ graph
1.4x faster (the LRN stays float between the int8 convs). ``onnx_friendly`` swaps it in on a copy of the model;
every export above goes through it.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.surgery import replace_type

OPSET = 17
EXPORTERS = ("torchscript-friendly", "torchscript", "torchscript-lrn", "dynamo")
"""How a float graph is exported. ``torchscript-friendly`` (the default): TorchScript exporter after
``onnx_friendly`` (LocalResponseNorm as a dozen cheap static ops; VGG-S int8 0.38 vs 0.53 ms at 48x48, 29 vs 36 ms
at 224, one thread). ``torchscript``: torch's own ~30-node LRN export. ``torchscript-lrn``: LRN as one ONNX ``LRN``
node (slower still in onnxruntime: 0.75 vs 0.61 ms). ``dynamo``: the torch.export-based exporter. int8 stores which
one its calibration ranges (keyed by tensor names) were measured on, so all four stay."""
INPUT, OUTPUT = "input", "logits"


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
    return replace_type(copy.deepcopy(model), nn.LocalResponseNorm, twin.from_float)


TWINS = {"torchscript-friendly": OnnxLocalResponseNorm, "torchscript-lrn": OnnxLRNNode, "torchscript": None}


@contextlib.contextmanager
def quiet():
    """Silence the exporters' and onnxruntime quantiser's advisory output for the duration: warnings, the root
    logger below ERROR, and stdout (the dynamo exporter prints its progress)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _torch_export(model: nn.Module, example: torch.Tensor, target, exporter: str, opset: int | None) -> None:
    """One ``torch.onnx.export`` call (``model`` already in eval mode): input ``input``, output ``logits``, dynamic
    batch. ``opset=None`` with ``dynamo``: the exporter's own default opset."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; one of {', '.join(EXPORTERS)}")
    with quiet(), torch.no_grad():
        if exporter == "dynamo":
            extra = {} if opset is None else {"opset_version": opset}
            torch.onnx.export(model, (example,), target, dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), **extra)
        else:
            twin = TWINS[exporter]
            source = onnx_friendly(model, twin) if twin else model
            torch.onnx.export(source, (example,), target, dynamo=False, opset_version=opset or OPSET,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def export_bytes(model: nn.Module, example: torch.Tensor, exporter: str = "torchscript-friendly",
                 opset: int = OPSET) -> bytes:
    """The serialized ONNX graph of ``model`` traced on ``example`` with ``exporter`` (one of ``EXPORTERS``).
    The model's train/eval mode is restored afterwards."""
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        _torch_export(model, example, buffer, exporter, opset)
    finally:
        model.train(was_training)
    return buffer.getvalue()


def untie_initializers(proto):
    """Replace Identity nodes on initializers (the exporter shares equal initializers through them) by copies, so
    that every Conv/Gemm has its own constant weight and bias, as onnxruntime's quantiser expects. In place."""
    import onnx
    initializers = {t.name: t for t in proto.graph.initializer}
    kept = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            duplicate = onnx.TensorProto()
            duplicate.CopyFrom(initializers[node.input[0]])
            duplicate.name = node.output[0]
            proto.graph.initializer.append(duplicate)
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return proto


def export_proto(model: nn.Module, example: torch.Tensor, exporter: str = "torchscript-friendly", opset: int = OPSET,
                 untie: bool = True):
    """``export_bytes`` loaded as an ``onnx.ModelProto``, its initializers untied (``untie_initializers``)."""
    import onnx
    proto = onnx.load_from_string(export_bytes(model, example, exporter, opset))
    return untie_initializers(proto) if untie else proto


def export_file(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, fallback: bool = True) -> Path:
    """Export ``model`` (put in eval mode) traced on N(0,1) noise of ``input_shape`` to ``path``: the TorchScript
    exporter after ``onnx_friendly``; if that fails and ``fallback``, the dynamo one."""
    model = model.eval()
    x = torch.randn(*input_shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _torch_export(model, x, str(path), "torchscript-friendly", OPSET)
    except Exception:  # noqa: BLE001 - try the other exporter before giving up
        if not fallback:
            raise
        _torch_export(onnx_friendly(model), x, str(path), "dynamo", None)
    return path


def write_graph(graph: bytes, path: str | Path) -> Path:
    """Write a serialized ONNX graph (e.g. a method's own, from its ``onnx_graph`` hook) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph)
    return path


def session(graph: str | Path | bytes, num_threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session of a ``.onnx`` path or serialized graph: ``num_threads`` intra-op threads
    (``None``/0: onnxruntime's default), one inter-op thread, all graph optimisations, errors-only logging.
    ``spinning=False``: the intra-op threads sleep as soon as a call ends (``session.intra_op.allow_spinning``),
    leaving the cores to whatever runs next."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = num_threads or 0
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
