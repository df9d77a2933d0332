"""Reduced precision: ``fixed-point`` training (Gupta et al. 2015) and ``fp16`` storage.

Fixed point ⟨IL, FL⟩ (survey §2.5, Berthelier 2018): a signed number with IL integer bits (sign included) and FL
fractional bits, step ε = 2^-FL, representable range [-2^(IL-1), 2^(IL-1) - ε]; values outside saturate to the
ends. With ⌊x⌋ the largest multiple of ε ≤ x:

    eq. 1  round-to-nearest:  ⌊x⌋ if x - ⌊x⌋ < ε/2, else ⌊x⌋ + ε
    eq. 2  stochastic:        ⌊x⌋ + ε with probability (x - ⌊x⌋)/ε, else ⌊x⌋      (E[round(x)] = x)

``FixedPointConv2d`` / ``FixedPointLinear`` quantise their weights and bias and their input activations in the
forward pass (straight-through gradient) and the back-propagated error dL/dy in the backward pass. The update
``w - lr * g`` is computed in fp32 (higher precision) by the optimiser and then, by ``after_step()`` (called by
the Trainer after each step), rounded back into ⟨IL, FL⟩ with the same rounding mode, as Gupta et al. do
(``weights="fixed"``); ``weights="shadow"`` instead keeps fp32 shadow weights and only quantises in the forward.
With round-to-nearest, updates smaller than ε/2 vanish, which is why it fails at low FL while stochastic
rounding keeps them in expectation. Dynamic fixed point (Courbariaux et al. 2014): each quantiser (a group:
one layer's weights, inputs or errors) keeps the word length IL+FL but moves its radix point every
``update_every`` calls: IL grows when more than ``overflow_rate`` of the values saturate and shrinks when even
half the range would not overflow.

Honest labels: fixed point is *simulated* in float32 (no integer kernels, no smaller file: weights are stored
fp32); ``fp16`` really halves the file, while its inference computes in fp32 (CPU fp16 convolutions are slower).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import surgery
from cnncompress.layers import CompressedLayer, base_config, register_layer
from cnncompress.methods.registry import MethodInfo, register


class RoundNearest(nn.Module):
    """Eq. 1 on values already divided by ε: ⌊x + 1/2⌋ (ties go up)."""

    def layer_config(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x + 0.5)


class RoundStochastic(nn.Module):
    """Eq. 2 on values already divided by ε: ⌊x⌋ + 1 with probability x - ⌊x⌋ (unbiased)."""

    def layer_config(self) -> dict:
        return {}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        low = torch.floor(x)
        noise = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return low + (noise < (x - low)).to(x.dtype)


ROUNDING = {"nearest": RoundNearest, "stochastic": RoundStochastic}


def make_rounding(mode: str) -> nn.Module:
    """The rounding module for ``mode`` ("nearest" | "stochastic"); ValueError otherwise."""
    if mode not in ROUNDING:
        raise ValueError(f"unknown rounding mode {mode!r}; choose one of {', '.join(ROUNDING)}")
    return ROUNDING[mode]()


def fixed_point(x: torch.Tensor, il: int, fl: int, rounding: nn.Module) -> torch.Tensor:
    """Convert ``x`` to ⟨il, fl⟩: ``clamp(round(x / ε) · ε, -2^(il-1), 2^(il-1) - ε)`` with ε = 2^-fl."""
    eps = 2.0 ** -fl
    return torch.clamp(rounding(x / eps) * eps, -2.0 ** (il - 1), 2.0 ** (il - 1) - eps)


class _Straight(torch.autograd.Function):
    """Forward: quantise; backward: pass the gradient straight through."""

    @staticmethod
    def forward(ctx, x, quantizer):
        return quantizer.quantize(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ErrorQuant(torch.autograd.Function):
    """Forward: identity; backward: quantise the back-propagated error."""

    @staticmethod
    def forward(ctx, x, quantizer):
        ctx.quantizer = quantizer
        return x.clone()  # a fresh tensor: the next layer may apply an in-place ReLU

    @staticmethod
    def backward(ctx, grad):
        return ctx.quantizer.quantize(grad), None


def _check_format(il: int, fl: int) -> None:
    if not (isinstance(il, int) and isinstance(fl, int)) or il < 1 or fl < 0 or il + fl > 32:
        raise ValueError(f"fixed-point format <IL={il!r}, FL={fl!r}> needs integers IL >= 1, FL >= 0, IL+FL <= 32")


class FixedPointQuantizer(nn.Module):
    """Quantises tensors to ⟨il, fl⟩ with a swappable ``rounding`` module; optional dynamic radix point.

    In eval mode stochastic rounding is replaced by round-to-nearest so that predictions are deterministic.
    """

    def __init__(self, il: int = 4, fl: int = 12, rounding: str = "stochastic", dynamic: bool = False,
                 update_every: int = 100, overflow_rate: float = 1e-4):
        super().__init__()
        _check_format(il, fl)
        if not isinstance(update_every, int) or update_every < 1 or not 0 <= overflow_rate < 1:
            raise ValueError("update_every must be a positive integer and overflow_rate in [0, 1)")
        self.bits, self.il0, self.mode, self.dynamic = il + fl, il, rounding, bool(dynamic)
        self.update_every, self.overflow_rate = update_every, float(overflow_rate)
        self.rounding = make_rounding(rounding)
        self.nearest = RoundNearest()
        self.register_buffer("il", torch.tensor([float(il)]))  # 1-d: the raw codec cannot view 0-d tensors
        self.register_buffer("calls", torch.tensor([0.0]))

    def layer_config(self) -> dict:
        return {"il": self.il0, "fl": self.bits - self.il0, "rounding": self.mode, "dynamic": self.dynamic,
                "update_every": self.update_every, "overflow_rate": self.overflow_rate}

    @property
    def fl(self) -> int:
        return self.bits - int(self.il.item())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic and self.training:
            self._update_radix(x)
        il = int(self.il.item())
        return fixed_point(x, il, self.bits - il, self.rounding if self.training else self.nearest)

    @torch.no_grad()
    def _update_radix(self, x: torch.Tensor) -> None:
        """Courbariaux et al. 2014: move the radix point on the overflow rate, every ``update_every`` calls."""
        if int(self.calls.item()) % self.update_every == 0 and x.numel():
            il = int(self.il.item())
            magnitude = x.detach().abs()
            if (magnitude >= 2.0 ** (il - 1)).float().mean().item() > self.overflow_rate and il < self.bits:
                il += 1
            elif il > 1 and (magnitude >= 2.0 ** (il - 2)).float().mean().item() <= self.overflow_rate:
                il -= 1
            self.il.fill_(float(il))
        self.calls += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return self.quantize(x)  # eval / no grad: plain ops, exportable to ONNX
        return _Straight.apply(x, self)

    def quantize_error(self, y: torch.Tensor) -> torch.Tensor:
        return _ErrorQuant.apply(y, self)


class _FixedPointLayer(CompressedLayer):
    @classmethod
    def from_float(cls, layer: nn.Module, **options) -> "_FixedPointLayer":
        """The fixed-point twin of a ``Conv2d``/``Linear`` (options: il, fl, rounding, dynamic, ...)."""
        return _converted(FixedPointConv2d, FixedPointLinear, layer, **options)

    """Mixin for conv/linear: quantised weights, inputs and back-propagated errors; fixed-point stored weights."""

    def _setup(self, il, fl, rounding, dynamic, activations, gradients, weights):
        _check_format(il, fl)
        if weights not in ("fixed", "shadow"):
            raise ValueError(f"weights must be 'fixed' or 'shadow', got {weights!r}")
        self.quant = {"il": il, "fl": fl, "rounding": rounding, "dynamic": bool(dynamic),
                      "activations": bool(activations), "gradients": bool(gradients), "weights": weights}
        self.weight_quant = FixedPointQuantizer(il, fl, rounding, dynamic)
        self.input_quant = FixedPointQuantizer(il, fl, rounding, dynamic) if activations else nn.Identity()
        self.error_quant = FixedPointQuantizer(il, fl, rounding, dynamic) if gradients else None

    def _quantized_params(self):
        weight = self.weight_quant(self.weight)
        bias = self.weight_quant(self.bias) if self.bias is not None else None
        return weight, bias

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.error_quant is not None and torch.is_grad_enabled() and y.requires_grad:
            y = self.error_quant.quantize_error(y)
        return y

    @torch.no_grad()
    def after_step(self) -> None:
        """Store the fp32-computed update back in ⟨IL, FL⟩ (Gupta et al.), unless fp32 shadow weights are kept."""
        if self.quant["weights"] == "fixed":
            for param in (self.weight, self.bias):
                if param is not None:
                    param.copy_(self.weight_quant.quantize(param))


class FixedPointConv2d(_FixedPointLayer, nn.Conv2d):
    def __init__(self, *args, il: int = 4, fl: int = 12, rounding: str = "stochastic", dynamic: bool = False,
                 activations: bool = True, gradients: bool = True, weights: str = "fixed", **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._setup(il, fl, rounding, dynamic, activations, gradients, weights)

    def layer_config(self) -> dict:
        return {**base_config(self, nn.Conv2d), **self.quant}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._quantized_params()
        return self._finish(self._conv_forward(self.input_quant(x), weight, bias))


class FixedPointLinear(_FixedPointLayer, nn.Linear):
    def __init__(self, *args, il: int = 4, fl: int = 12, rounding: str = "stochastic", dynamic: bool = False,
                 activations: bool = True, gradients: bool = True, weights: str = "fixed", **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._setup(il, fl, rounding, dynamic, activations, gradients, weights)

    def layer_config(self) -> dict:
        return {**base_config(self, nn.Linear), **self.quant}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._quantized_params()
        return self._finish(F.linear(self.input_quant(x), weight, bias))


class Fp16Conv2d(CompressedLayer, nn.Conv2d):
    """Conv whose weight and bias are fp16 values (stored as fp16); computes in fp32 unless ``compute="fp16"``."""

    def __init__(self, *args, compute: str = "fp32", **kwargs):
        super().__init__(*args, **kwargs)
        self.compute = compute

    def layer_config(self) -> dict:
        return {**base_config(self, nn.Conv2d), "compute": self.compute}

    @classmethod
    def from_float(cls, layer: nn.Module, compute: str = "fp32") -> nn.Module:
        """The fp16 twin of a ``Conv2d``/``Linear``."""
        return _converted(Fp16Conv2d, Fp16Linear, layer, compute=compute)

    def storage_codecs(self) -> dict:
        return {"weight": ("fp16", {}), **({"bias": ("fp16", {})} if self.bias is not None else {})}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute == "fp16":
            bias = self.bias.half() if self.bias is not None else None
            return self._conv_forward(x.half(), self.weight.half(), bias).float()
        return super().forward(x)


class Fp16Linear(CompressedLayer, nn.Linear):
    from_float = Fp16Conv2d.__dict__["from_float"]

    def __init__(self, *args, compute: str = "fp32", **kwargs):
        super().__init__(*args, **kwargs)
        self.compute = compute

    def layer_config(self) -> dict:
        return {**base_config(self, nn.Linear), "compute": self.compute}

    def storage_codecs(self) -> dict:
        return Fp16Conv2d.storage_codecs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute == "fp16":
            bias = self.bias.half() if self.bias is not None else None
            return F.linear(x.half(), self.weight.half(), bias).float()
        return super().forward(x)


for _cls in (RoundNearest, RoundStochastic, FixedPointQuantizer):  # quantizer parts: config from the class
    register_layer(_cls, _cls.layer_config)
for _cls in (FixedPointConv2d, FixedPointLinear, Fp16Conv2d, Fp16Linear):
    register_layer(_cls)


def _plain(_: str, module: nn.Module) -> bool:
    return type(module) in (nn.Conv2d, nn.Linear)


def _converted(cls_conv: type, cls_linear: type, layer: nn.Module, **options) -> nn.Module:
    """``layer``'s twin of class ``cls_conv``/``cls_linear`` with the same configuration and state."""
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    cls = cls_conv if base is nn.Conv2d else cls_linear
    replacement = cls(**base_config(layer, base), **options).to(layer.weight.device)
    replacement.load_state_dict(layer.state_dict(), strict=False)
    return replacement


def apply_fixed_point(model: nn.Module, il: int = 4, fl: int = 12, rounding: str = "stochastic",
                      dynamic: bool = False, activations: bool = True, gradients: bool = True,
                      weights: str = "fixed", layers="all", exclude=()) -> nn.Module:
    """Make the chosen conv/linear layers (``surgery.select``; default all) fixed-point ⟨il, fl⟩ layers (default
    16-bit ⟨4, 12⟩, stochastic rounding)."""
    _check_format(il, fl)
    make_rounding(rounding)
    options = {"il": il, "fl": fl, "rounding": rounding, "dynamic": dynamic, "activations": activations,
               "gradients": gradients, "weights": weights}

    model = surgery.replace_layers(
        model, lambda _, layer: FixedPointConv2d.from_float(layer, **options), layers, where=_plain, exclude=exclude)
    for module in model.modules():  # start from weights that are representable
        if isinstance(module, _FixedPointLayer):
            module.train(model.training)
            if weights == "fixed":
                module.weight_quant.eval()
                module.after_step()
                module.weight_quant.train(model.training)
    return model


def apply_fp16(model: nn.Module, compute: str = "fp32", layers="all", exclude=()) -> nn.Module:
    """Round conv/linear weights and biases to fp16 (stored fp16: half the bytes).

    With every layer chosen (``layers="all"``, no ``exclude``) all float tensors of the model go fp16 (BN and other
    methods' layers too); with a subset (``surgery.select``) only the chosen layers do.

    ``compute="fp32"`` (default) runs the same fp16 values in fp32 kernels; ``"fp16"`` casts activations to fp16
    too (slow on CPUs without fp16 arithmetic: measured in ``benchmarks/bench_quantize.py``).
    """
    if compute not in ("fp32", "fp16"):
        raise ValueError(f"compute must be 'fp32' or 'fp16', got {compute!r}")

    every = layers in ("all", None) and not exclude
    chosen = surgery.select(model, layers, where=_plain, exclude=exclude)
    for path, layer in chosen:
        model = surgery.replace(model, path, Fp16Conv2d.from_float(layer, compute=compute))
    rounded = [model] if every else [model.get_submodule(path) for path, _ in chosen]
    with torch.no_grad():  # every float tensor, also those of other methods' layers (hashed buckets, BN, ...)
        for module in rounded:
            for tensor in list(module.parameters()) + list(module.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())
    if not every:
        return model
    # float tensors that no layer gives a codec of its own are written as fp16 (e.g. hashed -> fp16)
    model.metadata = {**getattr(model, "metadata", {}), "float_codec": "fp16"}
    return model


register(MethodInfo(
    name="fixed-point", paper="Gupta et al. 2015 (survey §2.5 eq. 1-2); Courbariaux et al. 2014 (dynamic)",
    size="simulated", speed="none", family="reduced precision",
    handles="every Conv2d/Linear (weights, activations, gradients); any structure",
    description="<IL,FL> fixed point (default 16-bit <4,12>) for weights, activations and back-propagated errors; "
                "round-to-nearest or stochastic rounding; fp32 update rounded back; simulated in float32 (no "
                "fixed-point kernel runs: slower than fp32, no speed-up claimed)"),
    apply_fixed_point)

register(MethodInfo(
    name="fp16", paper="Berthelier 2018 §2.5 (16-bit floating point)", size="real", speed="none",
    family="reduced precision",
    handles="every float tensor; any structure",
    description="conv/linear weights in IEEE fp16 (file halves); inference computes in fp32 by default "
                "(CPU fp16 kernels are slower, see docs/quantize.md)"),
    apply_fp16)


def representable(x: torch.Tensor, il: int, fl: int) -> bool:
    """True when every element of ``x`` lies on the ⟨il, fl⟩ grid and inside its range."""
    eps = 2.0 ** -fl
    scaled = x / eps
    return bool(torch.all(scaled == torch.round(scaled)) and x.min() >= -2.0 ** (il - 1)
                and x.max() <= 2.0 ** (il - 1) - eps) if x.numel() else True


__all__ = ["RoundNearest", "RoundStochastic", "ROUNDING", "make_rounding", "fixed_point", "FixedPointQuantizer",
           "FixedPointConv2d", "FixedPointLinear", "Fp16Conv2d", "Fp16Linear", "apply_fixed_point", "apply_fp16",
           "representable"]
