"""Binarization: BinaryConnect, Binary-Weight-Networks, XNOR-Net, and binarized activations only.

Papers: Courbariaux et al. 2015 (BinaryConnect), Rastegari et al. 2016 (BWN, XNOR-Net), as used by Rassadin &
Savchenko 2017 §3 on VGG-S; survey: Berthelier et al. 2018 §2.6.

- Weights: forward uses ``s * b`` with ``b = sign(W)`` (deterministic) or, when ``stochastic`` and training,
  ``b = +1 with probability hard_sigmoid(W / s) = clip((W/s + 1) / 2, 0, 1)`` (survey eq. 3-4). The scale s is
  ``alpha_o = mean |W_o|`` per output filter (BWN, XNOR) or one constant ``H`` per layer fixed at conversion
  to the float layer's mean |W| (BinaryConnect's code uses a constant +-H per layer; without any scale a
  VGG-S with no BatchNorm overflows). The backward pass is the straight-through estimator clipped at
  |W| <= 1: dL/dW = dL/dW_b * 1{|W| <= 1}. The real-valued shadow weights are what the optimizer updates;
  ``after_step()`` clips them to [-1, 1] (BinaryConnect step 3).
- Inputs (``xnor``, ``binact``): ``sign(x)`` with the same clipped STE, times XNOR-Net's input scale
  ``K = box_kxk(mean_c |x|)`` (eq. 11), so ``conv(x, W) ~ (sign(x) * sign(W)) . K alpha``.
- Block reorder for binary inputs: the paper turns every conv-BN-activation block except the first into
  BN -> binary activation -> conv. VGG-S and SqueezeNet have no BatchNorm, so a fresh BatchNorm (2d for convs,
  1d for linears) is inserted right before each binarized layer, whose forward applies the binary activation
  itself: ``conv`` becomes ``Sequential(bn=BatchNorm, binary=BinaryConv2d)``; the ReLU/LRN/pool that followed
  the conv stay after it (pooling stays before the next binarization, as XNOR-Net recommends).
- The first conv/linear and the last conv/linear stay full precision (``keep_first``/``keep_last``); grouped or
  dilated convs are skipped.

Storage: binary weights use the ``bitpack`` codec (1 bit/weight + fp32 alpha per filter). Inference:
``to_inference`` swaps XNOR layers for ``XnorConv2d``/``XnorLinear`` (bit-packed XNOR-popcount kernel,
``kernels/bitpack.py``) and BWN/BinaryConnect layers for ``SignedConv2d``/``SignedLinear`` (the scaled sign
weights materialized as fp32 for BLAS; stored as bits).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .. import storage
from ..kernels import bitpack
from ..storage import codec_bitpack  # noqa: F401  (registers the codec)
from ..storage.architecture import set_submodule
from .binarize_reorder import fast_float_layers
from .registry import MethodInfo, register

SCALES = ("filter", "layer", "none")


class _SignSTE(torch.autograd.Function):
    """Forward: the given ±1 values (exact); backward: gradient * 1{|x| <= 1} (clipped straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return signs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1.0).to(grad.dtype), None


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (sign(0)=+1) forward; gradient 1{|x| <= 1} backward (clipped straight-through estimator)."""
    return _SignSTE.apply(x, bitpack.sign(x.detach()))


def stochastic_sign(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """+1 with probability hard_sigmoid(w / scale) = clip((w/scale + 1) / 2, 0, 1), else -1; clipped STE."""
    probability = ((w.detach() / scale.detach().clamp_min(1e-12) + 1.0) / 2.0).clamp(0.0, 1.0)
    return _SignSTE.apply(w, torch.where(torch.rand_like(w) < probability, 1.0, -1.0).to(w.dtype))


class _Binary:
    """Shared logic of BinaryConv2d / BinaryLinear (mixed into the torch layer so state-dict names stay)."""

    def _setup(self, binary_weights: bool, scale: str, binary_input: bool, input_scale: bool, stochastic: bool):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if not binary_weights and not binary_input:
            raise ValueError("a binary layer needs binary weights, binary inputs, or both")
        self.binary_weights, self.scale, self.binary_input = bool(binary_weights), scale, bool(binary_input)
        self.input_scale, self.stochastic = bool(input_scale), bool(stochastic)
        if self.binary_weights and scale == "layer":
            self.register_buffer("scale_h", torch.ones(1))

    def _flags(self) -> dict:
        return {"binary_weights": self.binary_weights, "scale": self.scale, "binary_input": self.binary_input,
                "input_scale": self.input_scale, "stochastic": self.stochastic}

    def weight_scale(self) -> torch.Tensor:
        w = self.weight
        if self.scale == "filter":
            return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        if self.scale == "layer":
            return self.scale_h
        return torch.ones((), dtype=w.dtype, device=w.device)

    def binary_weight(self) -> torch.Tensor:
        """The weight the forward uses: s * b (or the real weight when weights are not binarized)."""
        if not self.binary_weights:
            return self.weight
        scale = self.weight_scale()
        if self.stochastic and self.training:
            return scale * stochastic_sign(self.weight, scale)
        return scale * ste_sign(self.weight)

    @torch.no_grad()
    def after_step(self) -> None:
        """Clip the shadow weights to [-1, 1] after every optimizer step (BinaryConnect)."""
        if self.binary_weights:
            self.weight.clamp_(-1.0, 1.0)

    def storage_codecs(self) -> dict:
        if not self.binary_weights:
            return {}
        return {"weight": ("bitpack", {"scale": "filter" if self.scale == "filter" else "none"})}

    def _init_from(self, layer: nn.Module) -> None:
        with torch.no_grad():
            self.weight.copy_(layer.weight.clamp(-1, 1) if self.binary_weights else layer.weight)
            if layer.bias is not None:
                self.bias.copy_(layer.bias)
            if self.binary_weights and self.scale == "layer":
                self.scale_h.fill_(float(layer.weight.abs().mean()))


class BinaryConv2d(_Binary, nn.Conv2d):
    """Conv2d with binarized weights and/or inputs (see the module docstring for the formulas)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 binary_weights: bool = True, scale: str = "filter", binary_input: bool = False,
                 input_scale: bool = True, stochastic: bool = False):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self._setup(binary_weights, scale, binary_input, input_scale, stochastic)

    def layer_config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "bias": self.bias is not None, **self._flags()}

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **flags) -> "BinaryConv2d":
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.bias is not None, **flags).to(conv.weight.device)
        layer._init_from(conv)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.binary_weight()
        if not self.binary_input:
            return F.conv2d(x, weight, self.bias, self.stride, self.padding)
        out = F.conv2d(ste_sign(x), weight, None, self.stride, self.padding)
        if self.input_scale:
            kh, kw = self.kernel_size
            box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
            out = out * F.conv2d(x.abs().mean(1, keepdim=True), box, stride=self.stride, padding=self.padding)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class BinaryLinear(_Binary, nn.Linear):
    """Linear with binarized weights and/or inputs; input scale K = mean |x| per sample."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, binary_weights: bool = True,
                 scale: str = "filter", binary_input: bool = False, input_scale: bool = True,
                 stochastic: bool = False):
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._setup(binary_weights, scale, binary_input, input_scale, stochastic)

    def layer_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                **self._flags()}

    @classmethod
    def from_float(cls, linear: nn.Linear, **flags) -> "BinaryLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **flags).to(linear.weight.device)
        layer._init_from(linear)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.binary_weight()
        if not self.binary_input:
            return F.linear(x, weight, self.bias)
        out = F.linear(ste_sign(x), weight)
        if self.input_scale:
            out = out * x.abs().mean(-1, keepdim=True)
        return out if self.bias is None else out + self.bias


class _OneDimCounter:
    """BatchNorm whose step counter is 1-dim: the .ccz ``raw`` codec cannot store 0-dim integer tensors yet."""

    def _fix_counter(self) -> None:
        self.num_batches_tracked = self.num_batches_tracked.reshape(1)

    def layer_config(self) -> dict:
        return {"num_features": self.num_features}


class BlockNorm2d(_OneDimCounter, nn.BatchNorm2d):
    """The BatchNorm inserted before a binary-input conv (BN -> binary activation -> conv)."""

    def __init__(self, num_features: int):
        nn.BatchNorm2d.__init__(self, num_features)
        self._fix_counter()


class BlockNorm1d(_OneDimCounter, nn.BatchNorm1d):
    """The BatchNorm inserted before a binary-input linear."""

    def __init__(self, num_features: int):
        nn.BatchNorm1d.__init__(self, num_features)
        self._fix_counter()


# ---------------------------------------------------------------- inference layers
class SignedConv2d(nn.Conv2d):
    """Inference form of a BWN/BinaryConnect conv: weight = s * sign(W) materialized for BLAS, stored as bits."""

    def layer_config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "bias": self.bias is not None}

    def storage_codecs(self) -> dict:
        return {"weight": ("bitpack", {"scale": "filter"})}


class SignedLinear(nn.Linear):
    """Inference form of a BWN/BinaryConnect linear (see SignedConv2d)."""

    def layer_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def storage_codecs(self) -> dict:
        return {"weight": ("bitpack", {"scale": "filter"})}


class XnorConv2d(nn.Module):
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
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "bias": self.bias is not None, "input_scale": self.input_scale}

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

    def _correction(self, size: tuple[int, int]):
        if size not in self._corrections:
            shape = (self.out_channels, self.in_channels, *self.kernel_size)
            signs = bitpack.unpack_conv_weight(self.wbits, shape)
            self._corrections[size] = bitpack.padding_correction(signs, size, self.stride, self.padding)
        return self._corrections[size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bitpack.xnor_conv2d(x, self.wbits, self.in_channels, self.kernel_size, self.stride, self.padding,
                                   self.alpha, self.bias, self.input_scale, self._correction(tuple(x.shape[-2:])))


class XnorLinear(nn.Module):
    """XNOR linear on packed words: (n - 2 popcount(x xor w)) * alpha_o * mean|x| + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_scale: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.input_scale = in_features, out_features, bool(input_scale)
        self.register_buffer("wbits", torch.zeros(out_features, bitpack.n_words(in_features), dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def layer_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "input_scale": self.input_scale}

    @classmethod
    def from_binary(cls, layer: BinaryLinear) -> "XnorLinear":
        fast = cls(layer.in_features, layer.out_features, layer.bias is not None, layer.input_scale)
        with torch.no_grad():
            fast.wbits.copy_(bitpack.pack_rows(layer.weight))
            fast.alpha.copy_(layer.weight_scale().detach().reshape(-1).expand(layer.out_features))
            if layer.bias is not None:
                fast.bias.copy_(layer.bias)
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bitpack.xnor_linear(x, self.wbits, self.in_features, self.alpha, self.bias, self.input_scale)


for _cls in (BlockNorm2d, BlockNorm1d, BinaryConv2d, BinaryLinear, SignedConv2d, SignedLinear, XnorConv2d, XnorLinear):
    storage.register_layer(_cls)


# ---------------------------------------------------------------- methods
def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, (SignedConv2d, SignedLinear))]


def binarize(model: nn.Module, *, binary_weights: bool, scale: str, binary_input: bool, input_scale: bool = True,
             stochastic: bool = False, keep_first: bool = True, keep_last: bool = True,
             insert_bn: bool = True) -> nn.Module:
    """Replace every eligible Conv2d/Linear of ``model`` (in place) by its binary layer; returns the model."""
    layers = _weight_layers(model)
    if any(isinstance(m, _Binary) for _, m in layers):
        raise ValueError("model is already binarized")
    chosen = layers[1 if keep_first else 0: len(layers) - 1 if keep_last else len(layers)]
    chosen = [(n, m) for n, m in chosen if isinstance(m, nn.Linear) or
              (m.groups == 1 and tuple(m.dilation) == (1, 1) and m.padding_mode == "zeros"
               and not isinstance(m.padding, str))]
    if not chosen:
        raise ValueError(f"no eligible layers to binarize ({len(layers)} conv/linear layers; the first and last "
                         "stay full precision: set keep_first=False / keep_last=False to binarize them)")
    flags = {"binary_weights": binary_weights, "scale": scale, "binary_input": binary_input,
             "input_scale": input_scale, "stochastic": stochastic}
    for name, layer in chosen:
        is_conv = isinstance(layer, nn.Conv2d)
        binary = (BinaryConv2d if is_conv else BinaryLinear).from_float(layer, **flags)
        if binary_input and insert_bn:
            features = layer.in_channels if is_conv else layer.in_features
            norm = (BlockNorm2d if is_conv else BlockNorm1d)(features).to(layer.weight.device)
            binary = nn.Sequential(OrderedDict([("bn", norm), ("binary", binary)]))
        model = set_submodule(model, name, binary)
    return model


def _check_bool(**values) -> None:
    for key, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")


def apply_binaryconnect(model: nn.Module, stochastic: bool = False, keep_first: bool = True,
                        keep_last: bool = True) -> nn.Module:
    """BinaryConnect: W_b = H sign(W) (H: per-layer constant), real inputs."""
    _check_bool(stochastic=stochastic, keep_first=keep_first, keep_last=keep_last)
    return binarize(model, binary_weights=True, scale="layer", binary_input=False, stochastic=stochastic,
                    keep_first=keep_first, keep_last=keep_last)


def apply_bwn(model: nn.Module, stochastic: bool = False, keep_first: bool = True, keep_last: bool = True) -> nn.Module:
    """Binary-Weight-Network: W ~ alpha_o sign(W_o), alpha_o = mean |W_o| per output filter, real inputs."""
    _check_bool(stochastic=stochastic, keep_first=keep_first, keep_last=keep_last)
    return binarize(model, binary_weights=True, scale="filter", binary_input=False, stochastic=stochastic,
                    keep_first=keep_first, keep_last=keep_last)


def apply_xnor(model: nn.Module, input_scale: bool = True, stochastic: bool = False, keep_first: bool = True,
               keep_last: bool = True, insert_bn: bool = True) -> nn.Module:
    """XNOR-Net: binary weights (alpha per filter) and binary inputs (scale K), BN -> sign -> conv blocks."""
    _check_bool(input_scale=input_scale, stochastic=stochastic, keep_first=keep_first, keep_last=keep_last,
                insert_bn=insert_bn)
    return binarize(model, binary_weights=True, scale="filter", binary_input=True, input_scale=input_scale,
                    stochastic=stochastic, keep_first=keep_first, keep_last=keep_last, insert_bn=insert_bn)


def apply_binact(model: nn.Module, input_scale: bool = True, keep_first: bool = True, keep_last: bool = True,
                 insert_bn: bool = True) -> nn.Module:
    """Binarized activations only (XNOR-Net without weight binarization): real weights, sign(x) K inputs."""
    _check_bool(input_scale=input_scale, keep_first=keep_first, keep_last=keep_last, insert_bn=insert_bn)
    return binarize(model, binary_weights=False, scale="none", binary_input=True, input_scale=input_scale,
                    keep_first=keep_first, keep_last=keep_last, insert_bn=insert_bn)


@torch.no_grad()
def to_inference(model: nn.Module) -> nn.Module:
    """Swap binary layers for their inference forms: XNOR -> bit-packed popcount kernel, BWN -> signed fp32."""
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, _Binary):
            continue
        if layer.binary_weights and layer.binary_input:
            fast = (XnorConv2d if isinstance(layer, nn.Conv2d) else XnorLinear).from_binary(layer)
        elif layer.binary_weights:
            if isinstance(layer, nn.Conv2d):
                fast = SignedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                    layer.padding, bias=layer.bias is not None)
            else:
                fast = SignedLinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            fast.weight.copy_(layer.eval().binary_weight())
            if layer.bias is not None:
                fast.bias.copy_(layer.bias)
        else:
            continue  # binarized activations with real weights: the float reference path is the fastest here
        model = set_submodule(model, name, fast)
    if any(isinstance(m, (XnorConv2d, XnorLinear)) for m in model.modules()):
        model = fast_float_layers(model)
    return model.eval()


PAPER = "Courbariaux 2015; Rastegari 2016 (XNOR-Net); Rassadin & Savchenko 2017 §3"
_ROW = {"model": "vgg_s", "finetune": 1}
register(MethodInfo("binaryconnect", "Courbariaux et al. 2015, BinaryConnect", size="real", speed="none",
                    description="weights H*sign(W), 1 bit/weight on disk; inference runs fp32 BLAS",
                    bench=({**_ROW, "config": {}, "label": "BinaryConnect"},)),
         apply_binaryconnect, to_inference)
register(MethodInfo("bwn", "Rastegari et al. 2016, Binary-Weight-Networks", size="real", speed="none",
                    description="weights alpha_o*sign(W), 1 bit/weight + fp32 alpha per filter; inference fp32 BLAS",
                    bench=({**_ROW, "config": {}, "label": "BWN"},)),
         apply_bwn, to_inference)
register(MethodInfo("xnor", "Rastegari et al. 2016, XNOR-Net", size="real", speed="real",
                    description="binary weights and inputs; bit-packed XNOR-popcount C kernel at inference",
                    bench=({**_ROW, "config": {}, "label": "XNOR-Net"},)),
         apply_xnor, to_inference)
register(MethodInfo("binact", "Rassadin & Savchenko 2017 (XNOR-Net w/o weight binarization)", size="simulated",
                    speed="none", description="binary activations, real weights: no file saving, no fast kernel",
                    bench=({**_ROW, "config": {}, "label": "Binary activations"},)),
         apply_binact, to_inference)
