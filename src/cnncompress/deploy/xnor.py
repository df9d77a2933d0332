"""``NativeSequential``: an XNOR model's ``nn.Sequential`` blocks run as one native call per block.

``to_inference`` of a model with XNOR layers swaps each topmost ``nn.Sequential`` that holds one for a
``NativeSequential`` (same children, same state dict, same file layout). In inference (eval mode, no gradient
wanted, not tracing) its forward lowers the children to the op table of ``kernels/binary_graph.py`` once per input
shape and runs the runs of supported layers in one ctypes call each:

- ``XnorConv2d`` / ``XnorLinear`` with the ``BatchNorm`` in front folded in (``scale = w / sqrt(var + eps)``,
  ``shift = b - mean * scale``), a following ``ReLU`` fused;
- float ``Conv2d`` (groups 1, no dilation, zero padding) up to ``FLOAT_CONV_MACS`` multiply-adds (the FER-size
  stem; larger float convs stay on PyTorch's oneDNN, which is faster there), ``Linear``, ``BatchNorm`` elsewhere
  (an affine op), ``ReLU``, LRN, unpadded max-pool, ``Flatten``; ``Dropout`` and ``Identity`` are dropped.

Any other child splits the block: it runs as a PyTorch module between two native runs, except a float ``Conv2d`` too
large for the native stem. That one, where the block's ``stem`` precision is bf16 (``"auto"``: on a CPU with
AVX512-BF16 or AMX bf16, ``stem_precision``), runs in bf16 on oneDNN with the ReLU / LRN / max-pool after it in one
native epilogue (``Bf16Conv``; XNOR VGG-S at 224, AMX host, one model per process: 8.3 ms at 1 thread, 5.9 ms at 2,
against 10.2 ms and 6.6-8.8 ms with the fp32 stem). In fp32, when PyTorch has more than one thread, it runs on
onnxruntime with its threads sleeping between calls (``QuietConv``), because oneDNN's OpenMP workers spin for
milliseconds after each parallel region, on the cores the block's native threads need next (AMD host, 2 threads:
10.0-13.7 ms with it, 14.9-16.9 ms with conv1 on oneDNN); at one thread PyTorch's oneDNN runs it. The reference of a
native run is the same children called one by one (``nn.Sequential.forward``, also the path in training, with
gradients, under ``torch.onnx`` export or tracing, and without a C compiler); the tests compare the two. A block's
lowering is cached per input shape and redone when any of its tensors is written in place (``Tensor._version``: an
optimizer step, ``load_state_dict``), after ``.to()`` / ``.float()`` and ``train()`` / ``eval()``. Assigning a new
tensor object to a layer's attribute is not seen: call ``.train(False)`` after doing so.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from cnncompress import surgery
from cnncompress.methods.batchnorm_folding import norm_affine
from cnncompress import hardware as cpu
from cnncompress.kernels import binary_graph, native
from cnncompress.layers import register_layer
from cnncompress.methods import binarize_inference
from cnncompress.methods.binarize_inference import FastLocalResponseNorm, FastMaxPool2d, XnorConv2d, XnorLinear

FLOAT_CONV_MACS = 16_000_000  # VGG-S conv1: 0.5 M at 48x48 grey width 0.25 (native), 168 M at 224 (oneDNN)
_DROPPED = (nn.Dropout, nn.Identity)
_RELU_FUSES = ("conv", "xconv", "xlinear", "linear", "affine")


def _leaves(module: nn.Module) -> list[nn.Module]:
    if type(module) in (nn.Sequential, NativeSequential):
        return [leaf for child in module.children() for leaf in _leaves(child)]
    return [module]


def _conv_ok(conv: nn.Conv2d, shape: tuple) -> bool:
    if (conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or len(shape) != 3):
        return False
    oh = (shape[1] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    ow = (shape[2] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    return conv.weight.numel() * oh * ow <= FLOAT_CONV_MACS


def _op_desc(layer: nn.Module, shape: tuple) -> dict | None:
    """The op of ``layer`` (for an input of ``shape`` without the batch), or None when it has none."""
    if isinstance(layer, XnorConv2d):
        return {"kind": "xconv", "wbits": layer.wbits, "alpha": layer.alpha, "bias": layer.bias,
                "kernel": layer.kernel_size, "stride": layer.stride, "padding": layer.padding,
                "input_scale": layer.input_scale, "correction": layer._correction}
    if isinstance(layer, XnorLinear):
        return {"kind": "xlinear", "wbits": layer.wbits, "alpha": layer.alpha, "bias": layer.bias,
                "input_scale": layer.input_scale}
    if type(layer) is nn.Conv2d and _conv_ok(layer, shape):
        return {"kind": "conv", "weight": layer.weight, "bias": layer.bias, "stride": layer.stride,
                "padding": layer.padding}
    if type(layer) is nn.Linear and len(shape) == 1:  # on (N, C, H, W) torch's Linear acts on the last axis
        return {"kind": "linear", "weight": layer.weight, "bias": layer.bias}
    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
        scale, shift = norm_affine(layer)
        return {"kind": "affine", "scale": scale, "shift": shift}
    if type(layer) is nn.ReLU:
        return {"kind": "relu"}
    if isinstance(layer, (nn.LocalResponseNorm, FastLocalResponseNorm)) and len(shape) == 3:
        return {"kind": "lrn", "size": layer.size, "alpha": layer.alpha, "beta": layer.beta, "k": layer.k}
    if isinstance(layer, FastMaxPool2d) and len(shape) == 3:
        return {"kind": "maxpool", "kernel": layer.kernel_size, "stride": layer.stride, "ceil_mode": layer.ceil_mode}
    if type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
        return {"kind": "flatten"}
    return None


def _merge(op_descs: list[dict], op_desc: dict) -> None:
    """Append ``op_desc``, fusing: an affine (BatchNorm) into the binary layer after it, a ReLU into the op before."""
    last = op_descs[-1] if op_descs else None
    if op_desc["kind"] == "relu" and last and last["kind"] in _RELU_FUSES and not last.get("relu"):
        last["relu"] = True
    elif op_desc["kind"] in ("xconv", "xlinear") and last and last["kind"] == "affine" and not last.get("relu"):
        op_descs[-1] = {**op_desc, "scale": last["scale"], "shift": last["shift"]}
    else:
        op_descs.append(op_desc)


class QuietConv:
    """A float ``Conv2d`` run by onnxruntime at ``threads`` intra-op threads that sleep between calls (see the
    module docstring); ``None`` from ``make`` when onnxruntime cannot take it (then PyTorch runs it)."""

    def __init__(self, session):
        self.session, self.name = session, session.get_inputs()[0].name

    @classmethod
    def make(cls, conv: nn.Conv2d, shape: tuple, threads: int) -> "QuietConv | None":
        from cnncompress.deploy import onnx_export
        try:
            graph = onnx_export.export_bytes(nn.Sequential(conv), torch.zeros(1, *shape))
            return cls(onnx_export.session(graph, threads, spinning=False))
        except Exception:  # noqa: BLE001 - no onnxruntime, an export it cannot take: PyTorch runs the conv
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.name: array})[0])


STEMS = ("auto", "fp32", "bf16")


def stem_precision(stem: str = "auto") -> str:
    """The precision a float conv too large for the native stem runs in: ``stem`` itself, or for ``"auto"``
    bf16 where the CPU computes bf16 natively (``cpu.has_bf16``: AVX512-BF16 dot products or AMX bf16 tiles, which
    oneDNN's bf16 convolution uses), else fp32. A kernel path forced below AVX-512 (``CNNCOMPRESS_ISA=avx2`` or
    ``scalar``, standing in for a CPU without it) gets fp32, as such a CPU would.

    VGG-S conv1 at 224 on the AMD EPYC (Zen 4: AVX512-BF16, no AMX), one thread, oneDNN: ~2 ms in bf16
    (``brg_conv_fwd:avx512_core_bf16``) against ~4.5-9 ms in fp32 (``jit:avx512_core``) under the same load."""
    if stem not in STEMS:
        raise ValueError(f"stem {stem!r}: expected one of {', '.join(STEMS)}")
    if stem != "auto":
        return stem
    try:
        lowered = native.requested_isa() in ("avx2", "scalar")
    except native.IsaError:  # a bad CNNCOMPRESS_ISA is refused where the kernels are built
        lowered = False
    return "bf16" if cpu.has_bf16() and not lowered else "fp32"


class Bf16Conv:
    """A float ``Conv2d`` run in bf16 by oneDNN (AMX tiles or AVX512-BF16 dot products) on the calling thread, with
    the ReLU / LRN / max-pool that follow it (``epilogue``, each optional) done by one native pass on its bf16 output
    (``binary_graph.StemEpilogue``), which writes float NCHW. Input cast to bf16 channels_last, weights rounded to
    bf16 once, fp32 accumulation. The XNOR paper keeps the first layer full precision; bf16 keeps 8 bits of
    mantissa of its inputs and weights (relative error <= 2^-9 each), which the next binary layer's ``sign`` only
    notices for activations within that of zero.

    VGG-S conv1 + ReLU + LRN + pool at 224, one thread, AMX host: ~0.8 ms, against 3.6 ms for the fp32 conv on
    oneDNN and the chain's float ReLU / LRN / pool. One thread whatever ``torch.get_num_threads()`` says: oneDNN's
    OpenMP workers would spin on the cores the native chain needs next (see ``QuietConv``)."""

    def __init__(self, conv: nn.Conv2d, shape: tuple, epilogue: list[nn.Module]):
        self.conv = copy.deepcopy(conv).eval().to(torch.bfloat16).to(memory_format=torch.channels_last)
        self.layers = epilogue
        conv_shape = tuple(conv(torch.zeros(1, *shape)).shape[1:])
        op_descs, out = [], conv_shape
        for layer in epilogue:
            op_descs.append(_op_desc(layer, out))
            out = binary_graph.output_shape(op_descs[-1], out)
        self.epilogue = binary_graph.StemEpilogue(op_descs, conv_shape)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        previous = torch.get_num_threads()
        if previous != 1:
            torch.set_num_threads(1)
        try:
            return self.conv(x.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
        finally:
            if previous != 1:
                torch.set_num_threads(previous)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.epilogue.run(self._conv(x))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation in PyTorch: the bf16 conv, then the epilogue layers one by one in float."""
        y = self._conv(x).float().contiguous()
        for layer in self.layers:
            y = layer(y)
        return y


def _epilogue(leaves: list[nn.Module]) -> list[nn.Module]:
    """The leading layers of ``leaves`` a bf16 stem's epilogue takes (``binary_graph.STEM_EPILOGUE``)."""
    taken, kinds = [], list(binary_graph.STEM_EPILOGUE)
    for layer in leaves:
        op_desc = _op_desc(layer, (1, 4, 4))  # the kind only; the shapes are laid out by Bf16Conv
        if op_desc is None or op_desc["kind"] not in kinds:
            break
        kinds = kinds[kinds.index(op_desc["kind"]) + 1:]
        taken.append(layer)
    return taken


def lower(block: nn.Module, shape: tuple, threads: int = 1, stem: str = "auto") -> list:
    """``block``'s children for inputs of ``shape`` (no batch) as steps: ``NativeChain`` runs, PyTorch modules, and
    the float convs too large for the native stem: in bf16 with their ReLU / LRN / pool (``Bf16Conv``) where
    ``stem_precision(stem)`` says so, else on onnxruntime with sleeping threads when ``threads`` > 1
    (``QuietConv``), else PyTorch's oneDNN (the module itself)."""
    steps, op_descs, start = [], [], shape
    bf16 = stem_precision(stem) == "bf16"
    leaves = [leaf for leaf in _leaves(block) if not isinstance(leaf, _DROPPED)]
    i = 0
    with torch.no_grad():
        while i < len(leaves):
            layer, i = leaves[i], i + 1
            op_desc = _op_desc(layer, shape)
            if op_desc is not None:
                _merge(op_descs, op_desc)
                shape = binary_graph.output_shape(op_desc, shape)
                continue
            if op_descs:
                steps.append(binary_graph.NativeChain(op_descs, start))
            if type(layer) is nn.Conv2d and bf16:
                epilogue = _epilogue(leaves[i:])
                step = Bf16Conv(layer, shape, epilogue)
                i += len(epilogue)
                shape = step.epilogue.out_shape
            else:
                step = (QuietConv.make(layer, shape, threads) if threads > 1 and type(layer) is nn.Conv2d
                        else None) or layer
                shape = tuple(layer(torch.zeros(1, *shape)).shape[1:])
            steps.append(step)
            op_descs, start = [], shape
        if op_descs:
            steps.append(binary_graph.NativeChain(op_descs, start))
    return steps


@register_layer(get_config=lambda module: {})
class NativeSequential(nn.Sequential):
    """An ``nn.Sequential`` whose inference runs its layers in native chains (see the module docstring)."""

    stem = "auto"  # the precision of float convs too large for the native stem (``stem_precision``)

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        self._plans: dict = {}

    @classmethod
    def from_sequential(cls, block: nn.Sequential) -> "NativeSequential":
        native = cls()
        for name, child in block.named_children():
            native.add_module(name, child)
        return native

    def __getstate__(self):  # ctypes op tables are not copied or pickled: rebuilt at the next call
        return {**self.__dict__, "_plans": {}}

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: tensors may be new objects
        self._plans = {}
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        self._plans = {}
        return super().train(mode)

    def _native_ok(self, x: torch.Tensor) -> bool:
        return (not self.training and binary_graph.available() and x.dim() in (2, 4)
                and not (torch.is_grad_enabled() and x.requires_grad)
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
                and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._native_ok(x):
            return super().forward(x)
        shape, threads = tuple(x.shape[1:]), torch.get_num_threads()
        plan = self._plans.get((shape, threads, self.stem))
        if plan is None or tuple(t._version for t in plan[0]) != plan[1]:
            tensors = [*self.parameters(), *self.buffers()]
            plan = self._plans[(shape, threads, self.stem)] = (tensors, tuple(t._version for t in tensors),
                                                               lower(self, shape, threads, self.stem))
        steps = plan[2]
        for step in steps:
            x = step.run(x) if isinstance(step, binary_graph.NativeChain) else step(x)
        return x


def native_blocks(model: nn.Module, stem: str = "auto") -> nn.Module:
    """Swap each topmost ``nn.Sequential`` holding an XNOR layer for a ``NativeSequential`` (in place; the root
    itself when it is one) whose large float convs run in ``stem`` precision (``stem_precision``). Returns the
    root."""
    stem_precision(stem)  # a bad name fails here, not at the first call
    done: list[str] = []
    for path, module in list(model.named_modules()):
        if any(path.startswith(p + ".") or p == "" for p in done) or type(module) is not nn.Sequential:
            continue
        if any(isinstance(m, (XnorConv2d, XnorLinear)) for m in module.modules()):
            native = NativeSequential.from_sequential(module)
            native.stem = stem
            model = surgery.replace(model, path, native)
            done.append(path)
    return model


@torch.no_grad()
def to_inference(model: nn.Module, stem: str = "auto") -> nn.Module:
    """``binarize_inference.to_inference`` (XNOR -> bit-packed kernel, BWN -> signed fp32, fast LRN / max-pool),
    then the Sequential blocks holding XNOR layers as ``NativeSequential`` (one native call per block run; a
    float conv too large for the native stem in ``stem`` precision: ``"auto"``: ``stem_precision``)."""
    return native_blocks(binarize_inference.to_inference(model), stem).eval()
