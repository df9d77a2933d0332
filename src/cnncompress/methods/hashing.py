"""HashedNets (Chen et al. 2015, "Compressing neural networks with the hashing trick"), as evaluated by
Rassadin & Savchenko 2017 §3 (compression 0.125, bias hashed) and surveyed by Berthelier et al. 2018 §2.2.

Each hashed layer keeps K = max(1, round(compression · n)) real buckets ``w`` for its n virtual weights:

    V[e] = ξ(e) · w[h(e)]            (h, ξ: ``cnncompress.kernels.hashed``, a fixed 32-bit hash of (seed, e))

and, with ``hash_bias``, the bias the same way with its own K_b = max(1, round(compression · out)) buckets.
Gradients reach the buckets as ∂L/∂w[k] = Σ_{e: h(e)=k} ξ(e) · ∂L/∂V[e] (the backward of one ``index_select``).
Initialisation from a trained layer: w[k] = mean of ξ(e)·W[e] over the e hashed to k (least squares);
``init="fresh"`` draws Kaiming-normal buckets instead (training from scratch).

The state dict holds only ``buckets`` (+ ``bias_buckets``, or a plain ``bias`` without bias hashing); the slot
map is a non-persistent buffer rebuilt from ``seed`` (in ``layer_config``, hence in the ``.ccz`` manifest).

Modes (``mode=``):
- ``expand`` (default): the int32 slot map is cached (4 bytes per virtual weight, built once at first use);
  training gathers the dense weight each step into reused memory (``kernels/hashed.c``: one gather; backward one
  scatter-add into the buckets; torch's ``index_select``/``index_add_`` without a compiler); inference
  materialises the dense weights once and reuses them until the buckets change: baseline speed;
  ``to_inference`` then frees the maps, so memory = baseline dense weights + buckets.
- ``on-the-fly``: nothing is cached; every forward rehashes the layer (~30 ns per virtual weight) and gathers its
  dense weight, which is freed after the layer: memory = buckets + one layer's dense weight, but slower.
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import surgery
from cnncompress.kernels import hashed as kernel
from cnncompress.layers import CompressedLayer, conv_config, linear_config, register_layer
from cnncompress.methods.registry import MethodInfo, register

MODES = ("expand", "on-the-fly")
INITS = ("mean", "fresh")


def num_buckets(n: int, compression: float) -> int:
    """K = max(1, round(compression · n))."""
    return max(1, int(round(compression * n)))


class _Hashed(CompressedLayer, nn.Module):
    """Shared machinery of HashedLinear / HashedConv2d (subclasses set ``weight_shape`` and ``_op``)."""

    weight_shape: tuple[int, ...]

    def _setup(self, out_features: int, bias: bool, num_buckets: int, num_bias_buckets: int, seed: int,
               mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n = math.prod(self.weight_shape)
        kernel._check(int(seed), n, int(num_buckets), kernel.MAX_SLOT_BUCKETS)
        if num_bias_buckets and not bias:
            raise ValueError("num_bias_buckets needs bias=True")
        if num_bias_buckets:
            kernel._check(int(seed), out_features, int(num_bias_buckets), kernel.MAX_SLOT_BUCKETS)
        self.out_features_, self.seed, self.mode = out_features, int(seed), mode
        self.num_buckets, self.num_bias_buckets = int(num_buckets), int(num_bias_buckets)
        self.register_parameter("buckets", nn.Parameter(torch.empty(self.num_buckets)))
        self.register_parameter("bias_buckets", nn.Parameter(torch.empty(self.num_bias_buckets))
                                if num_bias_buckets else None)
        self.register_parameter("bias", nn.Parameter(torch.empty(out_features)) if bias and not num_bias_buckets
                                else None)
        self.register_buffer("slots", None, persistent=False)
        self.register_buffer("bias_slots", None, persistent=False)
        self.register_buffer("dense_weight", None, persistent=False)
        self.register_buffer("dense_bias", None, persistent=False)
        self._dense_key = None
        self._train_buffer = kernel.ExpandBuffer()  # V's memory, reused across training steps
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------ maps
    def _maps(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight slots, bias slots): built at the first use and cached in ``expand`` mode (lazily, so that a
        loaded inference model never holds all maps at once), rehashed on every call in ``on-the-fly``."""
        if self.slots is not None:
            return self.slots, self.bias_slots
        device = self.buckets.device
        slots = kernel.slot_map(self.seed, math.prod(self.weight_shape), self.num_buckets, device=device)
        bias_slots = (kernel.slot_map(self.seed, self.out_features_, self.num_bias_buckets, bias=True,
                                      device=device) if self.num_bias_buckets else None)
        if self.mode == "expand":  # built once, kept (until release_maps)
            self.slots, self.bias_slots = slots, bias_slots
        return slots, bias_slots

    def release_maps(self) -> None:
        """Free the cached maps (an inference model with its dense weights expanded no longer needs them; they
        are rebuilt from the seed if the buckets change)."""
        self.slots = self.bias_slots = None

    def set_mode(self, mode: str) -> "_Hashed":
        """Switch between ``expand`` and ``on-the-fly`` (drops or rebuilds the cached maps)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.dense_weight = self.dense_bias = None
        self._dense_key = None
        self.release_maps()  # expand mode rebuilds them at the next use
        return self

    def reset_parameters(self) -> None:
        """Fresh init: Kaiming-normal buckets (fan-in of the virtual weight), zero bias."""
        fan_in = math.prod(self.weight_shape[1:])
        with torch.no_grad():
            if self.buckets.device.type != "meta":
                self.buckets.normal_(0.0, math.sqrt(2.0 / fan_in))
            for bias in (self.bias, self.bias_buckets):
                if bias is not None:
                    bias.zero_()

    # ------------------------------------------------------------------------------------------- weights
    def virtual_weight(self) -> torch.Tensor:
        """Dense V = ξ · w[h] in the layer's weight shape (differentiable w.r.t. the buckets)."""
        slots, _ = self._maps()
        return kernel.expand(self.buckets, slots).view(self.weight_shape)

    def virtual_bias(self) -> torch.Tensor | None:
        if self.bias_buckets is None:
            return self.bias
        _, bias_slots = self._maps()
        return kernel.expand(self.bias_buckets, bias_slots)

    def _virtual(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(V, bias) from one ``_maps`` call (in ``on-the-fly`` mode each call rehashes the layer)."""
        slots, bias_slots = self._maps()
        buffer = self._train_buffer if self.training and self.mode == "expand" else None
        weight = kernel.expand(self.buckets, slots, buffer).view(self.weight_shape)
        return weight, self._virtual_bias(bias_slots)

    @property
    def weight(self) -> torch.Tensor:
        """The virtual (dense) weight, for tools that read ``layer.weight``."""
        return self.virtual_weight()

    def _key(self) -> tuple:
        """Changes whenever the buckets or bias change (in-place updates bump ``_version``). Reads the parameter
        dict directly: ``nn.Module.__getattr__`` costs microseconds, which add up at batch 1."""
        params = self._parameters
        weight, bias = params["buckets"], params["bias_buckets"]
        bias = params["bias"] if bias is None else bias
        return (weight.data_ptr(), weight._version, None if bias is None else bias._version)

    @torch.no_grad()
    def materialize(self) -> None:
        """Expand mode: compute the dense weight and bias once (reused until the buckets change)."""
        weight, bias = self._virtual()
        self.dense_weight = weight.clone()
        self.dense_bias = None if bias is None else bias.detach().clone()
        self._dense_key = self._key()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.mode == "expand":
            buffers = self._buffers
            if torch.jit.is_tracing():  # ONNX (TorchScript) export: constants when fresh, else a Gather graph
                if buffers["dense_weight"] is not None and self._dense_key == self._key():
                    return self._op(x, buffers["dense_weight"], buffers["dense_bias"])
            elif torch.compiler.is_compiling():  # torch.export / dynamo: the expanded copy, if any, as constants
                if buffers["dense_weight"] is not None:
                    return self._op(x, buffers["dense_weight"], buffers["dense_bias"])
            elif not (self._parameters["buckets"].requires_grad and torch.is_grad_enabled()):
                if self._dense_key != self._key():
                    self.materialize()
                return self._op(x, buffers["dense_weight"], buffers["dense_bias"])
        return self._op(x, *self._virtual())

    def _virtual_bias(self, bias_slots) -> torch.Tensor | None:
        return self.bias if self.bias_buckets is None else kernel.expand(self.bias_buckets, bias_slots)

    def train(self, mode: bool = True):
        if mode:
            self.dense_weight = self.dense_bias = None  # training changes the buckets: drop the expanded copy
            self._dense_key = None
        return super().train(mode)

    # ---------------------------------------------------------------------------------------- from float
    @torch.no_grad()
    def _init_from(self, weight: torch.Tensor, bias: torch.Tensor | None, rescale: bool = False) -> None:
        """Buckets = mean of ξ·W per bucket; ``rescale``: then scale buckets (and hashed bias) by ||W|| / ||V||."""
        slots, bias_slots = self._maps()
        self.buckets.copy_(kernel.bucket_means(weight, slots, self.num_buckets))
        scale = 1.0
        if rescale:
            virtual = kernel.expand(self.buckets, slots).norm()
            scale = float(weight.norm() / virtual) if virtual > 0 else 1.0
            self.buckets.mul_(scale)
        if self.bias_buckets is not None:
            self.bias_buckets.copy_(kernel.bucket_means(bias, bias_slots, self.num_bias_buckets) * scale)
        elif self.bias is not None:
            self.bias.copy_(bias)

    def extra_repr(self) -> str:
        n = math.prod(self.weight_shape)
        return (f"weight={list(self.weight_shape)}, buckets={self.num_buckets} ({self.num_buckets / n:.4f}), "
                f"bias_buckets={self.num_bias_buckets}, seed={self.seed}, mode={self.mode}")


@register_layer
class HashedLinear(_Hashed):
    """Linear layer whose (out, in) weight is hashed into ``num_buckets`` buckets (0 bias buckets = plain bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, num_buckets: int = 1,
                 num_bias_buckets: int = 0, seed: int = 0, mode: str = "expand"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight_shape = (self.out_features, self.in_features)
        self._setup(self.out_features, bias, num_buckets, num_bias_buckets, seed, mode)

    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode == "expand":  # the fused kernel: never the dense dL/dV (kernels/hashed.py)
            slots, bias_slots = self._maps()
            return kernel.linear(x, self.buckets, slots, self.out_features, self._virtual_bias(bias_slots),
                                 self._train_buffer)
        return super().forward(x)

    def layer_config(self) -> dict:
        return {**linear_config(self), "bias": self.bias is not None or self.bias_buckets is not None,
                "num_buckets": self.num_buckets, "num_bias_buckets": self.num_bias_buckets, "seed": self.seed,
                "mode": self.mode}

    @classmethod
    def from_float(cls, layer: nn.Linear, compression: float = 0.125, hash_bias: bool = True, seed: int = 0,
                   mode: str = "expand", init: str = "mean", rescale: bool = False) -> "HashedLinear":
        has_bias = layer.bias is not None
        with torch.device(layer.weight.device):
            hashed = cls(layer.in_features, layer.out_features, has_bias,
                         num_buckets(layer.weight.numel(), compression),
                         num_buckets(layer.out_features, compression) if has_bias and hash_bias else 0, seed, mode)
        if init == "mean":
            hashed._init_from(layer.weight, layer.bias, rescale)
        return hashed


@register_layer
class HashedConv2d(_Hashed):
    """Conv2d whose (out, in/groups, kh, kw) weight is hashed into ``num_buckets`` buckets."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, num_buckets: int = 1, num_bias_buckets: int = 0, seed: int = 0,
                 mode: str = "expand"):
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        self.padding = padding if isinstance(padding, str) else pair(padding)
        self.weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._setup(self.out_channels, bias, num_buckets, num_bias_buckets, seed, mode)

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def layer_config(self) -> dict:
        return {**conv_config(self), "bias": self.bias is not None or self.bias_buckets is not None,
                "num_buckets": self.num_buckets, "num_bias_buckets": self.num_bias_buckets, "seed": self.seed,
                "mode": self.mode}

    @classmethod
    def from_float(cls, layer: nn.Conv2d, compression: float = 0.125, hash_bias: bool = True, seed: int = 0,
                   mode: str = "expand", init: str = "mean", rescale: bool = False) -> "HashedConv2d":
        if layer.padding_mode != "zeros":
            raise ValueError(f"padding_mode {layer.padding_mode!r} is not supported (zeros only)")
        has_bias = layer.bias is not None
        with torch.device(layer.weight.device):
            hashed = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, has_bias, num_buckets(layer.weight.numel(), compression),
                         num_buckets(layer.out_channels, compression) if has_bias and hash_bias else 0, seed, mode)
        if init == "mean":
            hashed._init_from(layer.weight, layer.bias, rescale)
        return hashed


def layer_seed(seed: int, path: str) -> int:
    """Per-layer hash seed: mix32(seed ^ crc32(layer path)), so layers never share a hash."""
    return kernel.reference_mix32(int(seed) ^ zlib.crc32(path.encode("utf-8")))


def apply_hashing(model: nn.Module, compression: float = 0.125, hash_bias: bool = True, layers="all",
                  seed: int = 0, mode: str = "expand", init: str = "mean", rescale: bool = True,
                  exclude=()) -> nn.Module:
    """Replace the chosen Linear/Conv2d layers (default: all) by hashed layers with ``compression`` × buckets.

    ``layers``: the toolkit's rule (``surgery.select``: ``"all"``, ``"conv"``, ``"linear"``, paths, last names such
    as ``"fc6"``, globs, ``exclude``); plain ``Linear``/``Conv2d`` layers only; ``init``: ``mean`` (from the trained
    weights) or ``fresh``; ``rescale`` (with ``mean``): scale each layer's buckets so that ||V|| = ||W||: the
    mean alone shrinks every layer's output ~2.8x (the mean of ~8 random-signed weights), which compounds over
    depth until the net outputs constants and fine-tuning stalls; ``mode``: ``expand`` or ``on-the-fly``;
    ``seed``: unsigned 32-bit.
    """
    if isinstance(compression, bool) or not isinstance(compression, (int, float)) or not 0 < compression <= 1:
        raise ValueError(f"compression must be in (0, 1], got {compression!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= kernel.MASK32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")

    def convert(path: str, layer: nn.Module) -> _Hashed:
        cls = HashedLinear if isinstance(layer, nn.Linear) else HashedConv2d
        return cls.from_float(layer, float(compression), bool(hash_bias), layer_seed(seed, path), mode, init,
                              bool(rescale))

    return surgery.replace_layers(model, convert, layers, where=lambda _, m: type(m) in (nn.Linear, nn.Conv2d),
                                  exclude=exclude)


def hashed_layers(model: nn.Module) -> list[_Hashed]:
    return [m for m in model.modules() if isinstance(m, _Hashed)]


def to_inference(model: nn.Module) -> nn.Module:
    """Eval mode, buckets frozen; ``expand`` layers materialise their dense weights now (once) and free their
    maps: inference memory = the baseline's dense weights + the buckets."""
    model.eval()
    for layer in hashed_layers(model):
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(False)
        if layer.mode == "expand":
            layer.materialize()
            layer.release_maps()
    return model


register(MethodInfo(
    name="hashed",
    paper="Chen et al. 2015 (HashedNets), as in Rassadin & Savchenko 2017 §3",
    size="real", speed="none", family="hashing",
    handles="every Conv2d/Linear (groups=1) inside any structure",
    description="hashing trick: each Linear/Conv2d weight (and bias) shares compression x n buckets chosen by a "
                "fixed 32-bit hash with a sign hash; the file stores only buckets + seed; inference expands the "
                "dense weights once (baseline speed, no speed-up claimed)",
    bench=({"model": "vgg_s", "config": {"compression": 0.125, "hash_bias": True}, "finetune": 3,
            "label": "hashed 1/8"},),  # 1 epoch: 60 % (control 98.5 %); the buckets need longer
), apply_hashing, to_inference=to_inference)
