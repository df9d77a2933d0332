"""Training layers of the binarization methods: BinaryConv2d / BinaryLinear, the STE, the inserted BatchNorms.

Formulas (Courbariaux et al. 2015, Rastegari et al. 2016; survey: Berthelier et al. 2018 §2.6):

- Weights: forward uses ``s * b`` with ``b = sign(W)`` (deterministic) or, when ``stochastic`` and training,
  ``b = +1 with probability hard_sigmoid(W / s) = clip((W/s + 1) / 2, 0, 1)`` (survey eq. 3-4). The scale s is
  ``alpha_o = mean |W_o|`` per output filter (BWN, XNOR) or one constant ``H`` per layer fixed at conversion
  to the float layer's mean |W| (BinaryConnect's code uses a constant +-H per layer; without any scale a
  VGG-S with no BatchNorm overflows). The backward pass is the straight-through estimator clipped at
  |W| <= 1: dL/dW = dL/dW_b * 1{|W| <= 1}. The real-valued shadow weights are what the optimizer updates;
  ``after_step()`` clips them to [-1, 1] (BinaryConnect step 3).
- Inputs (``xnor``, ``binact``): ``sign(x)`` with the same clipped STE, times XNOR-Net's input scale
  ``K = box_kxk(mean_c |x|)`` (eq. 11), so ``conv(x, W) ~ (sign(x) * sign(W)) . K alpha``.

Both layers follow the compressed-layer contract (``cnncompress.layers.CompressedLayer``): ``from_float``,
``layer_config``, ``storage_codecs`` (binary weights: the ``bitpack`` codec, 1 bit/weight + fp32 alpha per
filter) and ``after_step`` (the clip). ``BlockNorm1d/2d`` are the BatchNorms the block reorder inserts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress.kernels.bitpack_reference import sign
from cnncompress.layers import CompressedLayer, register_layer
from cnncompress.storage import codec_bitpack  # noqa: F401  (registers the codec the layers' storage_codecs name)

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
    return _SignSTE.apply(x, sign(x.detach()))


def stochastic_sign(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """+1 with probability hard_sigmoid(w / scale) = clip((w/scale + 1) / 2, 0, 1), else -1; clipped STE."""
    probability = ((w.detach() / scale.detach().clamp_min(1e-12) + 1.0) / 2.0).clamp(0.0, 1.0)
    return _SignSTE.apply(w, torch.where(torch.rand_like(w) < probability, 1.0, -1.0).to(w.dtype))


class _Binary(CompressedLayer):
    """Shared logic of BinaryConv2d / BinaryLinear (mixed in before the torch layer, so state-dict names stay).

    It is the ``CompressedLayer`` of both: its ``after_step``/``storage_codecs`` override the contract's no-op
    defaults, which a ``CompressedLayer`` listed first in the concrete classes' bases would shadow."""

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


def conv_fields(conv: nn.Conv2d) -> dict:
    """The Conv2d constructor fields the binary layers keep (no dilation/groups: those convs are not binarized)."""
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": list(conv.kernel_size), "stride": list(conv.stride), "padding": list(conv.padding),
            "bias": conv.bias is not None}


def linear_fields(linear: nn.Linear) -> dict:
    return {"in_features": linear.in_features, "out_features": linear.out_features, "bias": linear.bias is not None}


@register_layer
class BinaryConv2d(_Binary, nn.Conv2d):
    """Conv2d with binarized weights and/or inputs (see the module docstring for the formulas)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 binary_weights: bool = True, scale: str = "filter", binary_input: bool = False,
                 input_scale: bool = True, stochastic: bool = False):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self._setup(binary_weights, scale, binary_input, input_scale, stochastic)

    def layer_config(self) -> dict:
        return {**conv_fields(self), **self._flags()}

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


@register_layer
class BinaryLinear(_Binary, nn.Linear):
    """Linear with binarized weights and/or inputs; input scale K = mean |x| per sample."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, binary_weights: bool = True,
                 scale: str = "filter", binary_input: bool = False, input_scale: bool = True,
                 stochastic: bool = False):
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._setup(binary_weights, scale, binary_input, input_scale, stochastic)

    def layer_config(self) -> dict:
        return {**linear_fields(self), **self._flags()}

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


def _norm_config(module: nn.Module) -> dict:
    return {"num_features": module.num_features}


class _OneDimCounter:
    """BatchNorm whose step counter is 1-dim: the .ccz ``raw`` codec cannot store 0-dim integer tensors yet."""

    def _fix_counter(self) -> None:
        self.num_batches_tracked = self.num_batches_tracked.reshape(1)

    def layer_config(self) -> dict:
        return _norm_config(self)


@register_layer(get_config=_norm_config)
class BlockNorm2d(_OneDimCounter, nn.BatchNorm2d):
    """The BatchNorm inserted before a binary-input conv (BN -> binary activation -> conv). A plain float
    layer (not compressed), so not a ``CompressedLayer``."""

    def __init__(self, num_features: int):
        nn.BatchNorm2d.__init__(self, num_features)
        self._fix_counter()


@register_layer(get_config=_norm_config)
class BlockNorm1d(_OneDimCounter, nn.BatchNorm1d):
    """The BatchNorm inserted before a binary-input linear."""

    def __init__(self, num_features: int):
        nn.BatchNorm1d.__init__(self, num_features)
        self._fix_counter()
