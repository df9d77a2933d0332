"""Inference forms of the binarization methods and ``to_inference``, which swaps them in.

- XNOR layers (binary weights and inputs) -> ``XnorConv2d`` / ``XnorLinear``: packed 64-bit words and the
  bit-packed XNOR-popcount kernel of ``kernels/bitpack.py``:
  ``out = ((n - 2 popcount(x xor w)) - padding correction) * alpha_o * K + b``.
- BWN / BinaryConnect layers (binary weights, real inputs) -> ``SignedConv2d`` / ``SignedLinear``: the scaled
  sign weights ``s * sign(W)`` materialized as fp32 for BLAS (stored as bits, codec ``bitpack``).
- Binarized activations with real weights (``binact``) stay as they are: the float path is the fastest there.
- Around XNOR layers, torch's NCHW ``LocalResponseNorm`` (built from ``avg_pool3d``) and ceil-mode ``MaxPool2d``
  dominate VGG-S inference once the convs are binary (tens of ms at 224), so a model with XNOR layers also gets
  ``FastLocalResponseNorm`` / ``FastMaxPool2d``: drop-in subclasses with the same maths, C loops in
  ``kernels/bitpack.py`` (pure twins ``reference_local_response_norm`` / ``reference_max_pool2d``).

Each compressed inference layer is a ``layers.CompressedLayer``; its ``from_float(layer)`` takes the training
layer it replaces (``from_binary``), or a float layer, which it binarizes as the method would first.
"""
from __future__ import annotations

import torch
from torch import nn

from cnncompress import surgery
from cnncompress.kernels import bitpack
from cnncompress.layers import CompressedLayer, base_config, register_layer
from cnncompress.methods.binarize_layers import BinaryConv2d, BinaryLinear, _Binary, conv_fields, linear_fields


def _signed_weight(layer: _Binary) -> torch.Tensor:
    """The deterministic scaled sign weight ``s * sign(W)`` of a binary-weight training layer."""
    training = layer.training
    layer.eval()
    try:
        return layer.binary_weight().detach()
    finally:
        layer.train(training)


def _as_binary(layer: nn.Module, binary_cls: type, binary_input: bool) -> _Binary:
    """``layer`` itself when it is already a binary training layer, else its BWN / XNOR training form."""
    if isinstance(layer, _Binary):
        return layer
    return binary_cls.from_float(layer, binary_weights=True, scale="filter", binary_input=binary_input)


@register_layer
class SignedConv2d(CompressedLayer, nn.Conv2d):
    """Inference form of a BWN/BinaryConnect conv: weight = s * sign(W) materialized for BLAS, stored as bits."""

    def layer_config(self) -> dict:
        return conv_fields(self)

    def storage_codecs(self) -> dict:
        return {"weight": ("bitpack", {"scale": "filter"})}

    @classmethod
    @torch.no_grad()
    def from_float(cls, layer: nn.Conv2d) -> "SignedConv2d":
        """From a binary-weight ``BinaryConv2d`` (its own scale), or a float conv (BWN: alpha per filter)."""
        binary = _as_binary(layer, BinaryConv2d, binary_input=False)
        fast = cls(binary.in_channels, binary.out_channels, binary.kernel_size, binary.stride, binary.padding,
                   bias=binary.bias is not None)
        fast.weight.copy_(_signed_weight(binary))
        if binary.bias is not None:
            fast.bias.copy_(binary.bias)
        return fast


@register_layer
class SignedLinear(CompressedLayer, nn.Linear):
    """Inference form of a BWN/BinaryConnect linear (see SignedConv2d)."""

    def layer_config(self) -> dict:
        return linear_fields(self)

    def storage_codecs(self) -> dict:
        return {"weight": ("bitpack", {"scale": "filter"})}

    @classmethod
    @torch.no_grad()
    def from_float(cls, layer: nn.Linear) -> "SignedLinear":
        """From a binary-weight ``BinaryLinear`` (its own scale), or a float linear (BWN: alpha per filter)."""
        binary = _as_binary(layer, BinaryLinear, binary_input=False)
        fast = cls(binary.in_features, binary.out_features, bias=binary.bias is not None)
        fast.weight.copy_(_signed_weight(binary))
        if binary.bias is not None:
            fast.bias.copy_(binary.bias)
        return fast


@register_layer
class XnorConv2d(CompressedLayer, nn.Module):
    """XNOR conv on packed 64-bit words: ((n - 2 popcount(x xor w)) - pad correction) * alpha_o * K + b."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, bias: bool = True,
                 input_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.input_scale = in_channels, out_channels, bool(input_scale)
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)
        words = self.kernel_size[0] * self.kernel_size[1] * bitpack.n_words(in_channels)
        self.register_buffer("wbits", torch.zeros(out_channels, words, dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(out_channels))
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None)
        self._corrections: dict = {}

    def layer_config(self) -> dict:
        return {**conv_fields(self), "input_scale": self.input_scale}

    @classmethod
    def from_binary(cls, layer: BinaryConv2d) -> "XnorConv2d":
        fast = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                   layer.bias is not None, layer.input_scale)
        with torch.no_grad():
            fast.wbits.copy_(bitpack.pack_conv_weight(layer.weight))
            fast.alpha.copy_(layer.weight_scale().detach().reshape(-1).expand(layer.out_channels))
            if layer.bias is not None:
                fast.bias.copy_(layer.bias)
        return fast

    @classmethod
    def from_float(cls, layer: nn.Conv2d) -> "XnorConv2d":
        """``from_binary`` of an XNOR ``BinaryConv2d``; a float conv is first made one (``BinaryConv2d.from_float``)."""
        return cls.from_binary(_as_binary(layer, BinaryConv2d, binary_input=True))

    def _correction(self, size: tuple[int, int]):
        if size not in self._corrections:
            shape = (self.out_channels, self.in_channels, *self.kernel_size)
            signs = bitpack.unpack_conv_weight(self.wbits, shape)
            self._corrections[size] = bitpack.padding_correction(signs, size, self.stride, self.padding)
        return self._corrections[size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bitpack.xnor_conv2d(x, self.wbits, self.in_channels, self.kernel_size, self.stride, self.padding,
                                   self.alpha, self.bias, self.input_scale, self._correction(tuple(x.shape[-2:])))


@register_layer
class XnorLinear(CompressedLayer, nn.Module):
    """XNOR linear on packed words: (n - 2 popcount(x xor w)) * alpha_o * mean|x| + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_scale: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.input_scale = in_features, out_features, bool(input_scale)
        self.register_buffer("wbits", torch.zeros(out_features, bitpack.n_words(in_features), dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def layer_config(self) -> dict:
        return {**linear_fields(self), "input_scale": self.input_scale}

    @classmethod
    def from_binary(cls, layer: BinaryLinear) -> "XnorLinear":
        fast = cls(layer.in_features, layer.out_features, layer.bias is not None, layer.input_scale)
        with torch.no_grad():
            fast.wbits.copy_(bitpack.pack_rows(layer.weight))
            fast.alpha.copy_(layer.weight_scale().detach().reshape(-1).expand(layer.out_features))
            if layer.bias is not None:
                fast.bias.copy_(layer.bias)
        return fast

    @classmethod
    def from_float(cls, layer: nn.Linear) -> "XnorLinear":
        """``from_binary`` of an XNOR ``BinaryLinear``; a float linear is first made one."""
        return cls.from_binary(_as_binary(layer, BinaryLinear, binary_input=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bitpack.xnor_linear(x, self.wbits, self.in_features, self.alpha, self.bias, self.input_scale)


# ---------------------------------------------------------------- float layers of the XNOR graph
@register_layer(get_config=lambda m: base_config(m, nn.LocalResponseNorm))
class FastLocalResponseNorm(nn.LocalResponseNorm):
    """LRN across channels: b_c = a_c (k + alpha/n sum_{window} a^2)^-beta (Krizhevsky 2012), C loop."""

    @classmethod
    def from_float(cls, lrn: nn.LocalResponseNorm) -> "FastLocalResponseNorm":
        return cls(lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return bitpack.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


@register_layer(get_config=lambda m: base_config(m, nn.MaxPool2d))
class FastMaxPool2d(nn.MaxPool2d):
    """Unpadded max-pool (ceil mode as in Caffe) with a plain C loop."""

    @classmethod
    def from_float(cls, pool: nn.MaxPool2d) -> "FastMaxPool2d":
        return cls(pool.kernel_size, pool.stride, ceil_mode=pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or x.dim() != 4:
            return super().forward(x)
        return bitpack.max_pool2d(x, self.kernel_size, self.stride, self.ceil_mode)


def _fast_float(layer: nn.Module) -> nn.Module | None:
    if type(layer) is nn.LocalResponseNorm:
        return FastLocalResponseNorm.from_float(layer)
    if (type(layer) is nn.MaxPool2d and isinstance(layer.kernel_size, int) and isinstance(layer.stride, int)
            and layer.padding == 0 and layer.dilation == 1 and not layer.return_indices):
        return FastMaxPool2d.from_float(layer)
    return None  # subclasses (already fast, ONNX twins) and padded / tuple-size pools stay


def fast_float_layers(model: nn.Module) -> nn.Module:
    """Swap plain LRN and unpadded integer-size MaxPool2d layers of ``model`` for the fast subclasses (in place).
    The benchmark also times the fp32 model with this swap, so the speed-up of binarization alone is visible."""
    return surgery.replace_type(model, (nn.LocalResponseNorm, nn.MaxPool2d), _fast_float)


# ---------------------------------------------------------------- to_inference
def _inference_form(layer: _Binary) -> nn.Module | None:
    if layer.binary_weights and layer.binary_input:
        return (XnorConv2d if isinstance(layer, nn.Conv2d) else XnorLinear).from_binary(layer)
    if layer.binary_weights:
        return (SignedConv2d if isinstance(layer, nn.Conv2d) else SignedLinear).from_float(layer)
    return None  # binarized activations with real weights: the float reference path is the fastest here


@torch.no_grad()
def to_inference(model: nn.Module) -> nn.Module:
    """Swap binary layers for their inference forms: XNOR -> bit-packed popcount kernel, BWN -> signed fp32."""
    model = surgery.replace_type(model, _Binary, _inference_form)
    if any(isinstance(m, (XnorConv2d, XnorLinear)) for m in model.modules()):
        model = fast_float_layers(model)
    return model.eval()
