"""``bf16``: weights rounded to bfloat16, stored in 2 bytes, run by real bf16 kernels (OpenVINO on AMX /
AVX512-BF16).

Berthelier 2018 §2.5 (reduced precision: 16-bit floating point); Kalamkar et al. 2019 ("A Study of BFLOAT16 for
Deep Learning Training"): bfloat16 keeps fp32's sign and 8 exponent bits and 7 of its 23 mantissa bits,

    bf16(x) = round_nearest_even(x · 2^-(e-7)) · 2^(e-7),   e = ⌊log2 |x|⌋      (relative error ≤ 2^-8)

so it has fp32's range (no overflow, no loss scaling) at half the bytes, and CPUs with AVX512-BF16
(``vdpbf16ps``: bf16 pairs into fp32 sums) or AMX tiles multiply it at 2x (AVX-512) to ~16x (AMX) fp32's rate.

``apply``: the chosen conv/linear layers (``surgery.select``, default all) become ``Bf16Conv2d`` /
``Bf16Linear`` whose weight and bias are bf16 values, stored with the ``bf16`` codec; with every layer chosen,
every other float tensor (BN, ...) is rounded too and stored bf16, so the ``.ccz`` is half the fp32 file.
Before ``to_inference`` the model computes in fp32 with the bf16 values (the reference twin).

``to_inference``: the model's float ONNX graph compiled by OpenVINO with ``INFERENCE_PRECISION_HINT=bf16``
(``engines.OpenVinoModel``: convolutions and matmuls in bf16, accumulation in fp32), measured faster than
PyTorch's own bf16 (SqueezeNet-1.1 224, 1 thread: 3.2 vs 6.4 ms; onnxruntime fp32 5.6 ms; ``bench_engines.py``).
Without OpenVINO, PyTorch bf16 (oneDNN, channels_last) where the CPU has bf16; on a CPU without bf16 arithmetic
the model stays in fp32 compute. ``metadata["bf16_compute"]`` of the deployed model says which ran, and why.
"""
from __future__ import annotations

import torch
from torch import nn

from cnncompress import surgery

from cnncompress.layers import CompressedLayer, base_config, register_layer
from cnncompress.methods.registry import MethodInfo, register

GRAPH_NOTE = ("float graph (bf16-valued weights as fp32 tensors; run it at bf16 precision, e.g. OpenVINO "
              "INFERENCE_PRECISION_HINT=bf16)")


def to_bf16(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` rounded to the nearest bfloat16 (ties to even), returned in its own dtype."""
    return tensor.to(torch.bfloat16).to(tensor.dtype)


class _Bf16Weight(CompressedLayer):
    """Mixin: weight and bias are bf16 values (stored with the ``bf16`` codec); the forward is the torch base's
    (fp32 arithmetic on bf16 values: the reference twin of the bf16 engine)."""

    BASE: type = nn.Module

    @classmethod
    def from_float(cls, layer: nn.Module) -> "_Bf16Weight":
        """The bf16 twin of a plain ``Conv2d`` / ``Linear`` (same configuration, values rounded to bf16)."""
        twin = BF16_LAYERS[type(layer)] if cls is _Bf16Weight else cls
        rounded = twin(**base_config(layer, twin.BASE)).to(layer.weight.device)
        rounded.load_state_dict(layer.state_dict())
        rounded.round_values()
        return rounded

    def layer_config(self) -> dict:
        return base_config(self, self.BASE)

    @torch.no_grad()
    def round_values(self) -> None:
        for param in (self.weight, self.bias):
            if param is not None:
                param.copy_(to_bf16(param))

    def after_step(self) -> None:
        """Fine-tuning keeps the weights on the bf16 grid (the update is computed in fp32, then rounded)."""
        self.round_values()

    def storage_codecs(self) -> dict:
        return {"weight": ("bf16", {}), **({"bias": ("bf16", {})} if self.bias is not None else {})}


@register_layer
class Bf16Conv2d(_Bf16Weight, nn.Conv2d):
    BASE = nn.Conv2d


@register_layer
class Bf16Linear(_Bf16Weight, nn.Linear):
    BASE = nn.Linear


BF16_LAYERS = {nn.Conv2d: Bf16Conv2d, nn.Linear: Bf16Linear}


def _plain(_: str, module: nn.Module) -> bool:
    return type(module) in BF16_LAYERS


def apply_bf16(model: nn.Module, layers="all", exclude=()) -> nn.Module:
    """Round the chosen conv/linear layers' weights and biases to bf16 (``layers``/``exclude``: ``surgery.select``).

    With every layer chosen (``layers="all"``, no ``exclude``) all float tensors of the model go bf16 (BN and other
    methods' layers too) and are stored bf16: the ``.ccz`` halves. With a subset only the chosen layers do.
    """
    model = surgery.replace_layers(model, lambda _, layer: _Bf16Weight.from_float(layer), layers, where=_plain,
                                   exclude=exclude)
    if layers not in ("all", None) or exclude:
        return model
    with torch.no_grad():  # every float tensor, also those of other methods' layers (BN, hashed buckets, ...)
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(to_bf16(tensor))
    model.metadata = {**getattr(model, "metadata", {}), "float_codec": "bf16"}
    return model


register(MethodInfo(
    name="bf16", paper="Berthelier 2018 §2.5 (16-bit floating point); Kalamkar et al. 2019 (bfloat16)",
    size="real", speed="real", family="reduced precision",
    handles="every float tensor; any structure",
    description="conv/linear weights (and every float tensor) rounded to bfloat16, stored in 2 bytes (file "
                "halves); inference in bf16 kernels: OpenVINO INFERENCE_PRECISION_HINT=bf16 (AMX/AVX512-BF16), "
                "1.5-1.8x the fastest fp32 engine at 224 on AVX512-BF16 without AMX (benchmarks/bench_engines.py); "
                "fp32 compute where the CPU has no bf16"),
    apply_bf16)
