"""Unstructured magnitude pruning (Han et al. 2015, "Learning both weights and connections"; survey §2.3).

A weight is removed when it is small: with ``scope="global"`` (Han's rule) when ``|w| <= q * std(layer)`` with
one quality parameter ``q`` for all layers, set so that ``sparsity`` of all chosen weights go (layers with
small weights, such as a classifier initialised at N(0, 0.01), are not wiped out); with ``scope="layer"``
each layer loses the ``sparsity`` quantile of its own ``|w|`` (Han's per-layer
sensitivity settings through ``per_layer={"classifier.fc6": 0.96, ...}``). Iterative prune -> fine-tune:
with ``rounds=R`` the sparsity reached after round ``r`` is ``1 - (1 - s)^(r/R)``; round 1 happens in
``apply`` and round ``r`` after ``(r-1) * steps_per_round`` optimizer steps of fine-tuning (``after_step``).

Chosen ``Conv2d``/``Linear`` layers become ``PrunedConv2d``/``PrunedLinear``: same parameters, plus a boolean
``mask`` (not stored: it is ``weight != 0``); the forward uses ``weight * mask``, so pruned weights get zero
gradient and ``after_step`` re-zeroes them (momentum, weight decay): masks hold through fine-tuning.
Storage: ``csr`` with Han's relative indices (8-bit for conv, 5-bit for fc), or fp32 when that is smaller.
Inference (``to_inference``): each pruned fc layer times dense vs torch CSR at batch 1 and keeps the faster
(recorded in ``layer.path`` and ``model.metadata["sparse_paths"]``); convs run dense.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import surgery
from cnncompress.kernels.sparse import CSRWeight, choose_path, csr_linear
from cnncompress.layers import CompressedLayer, conv_config, linear_config, register_layer
from cnncompress.storage import codec_codebook, codec_sparse  # noqa: F401  (registers csr, codebook, huffman)
from cnncompress.methods.registry import MethodInfo, register

CONV_INDEX_BITS, FC_INDEX_BITS = 8, 5
MAX_LAYER_SPARSITY = 0.99  # global scope: no layer loses more than this


def sparse_codec(weight: torch.Tensor, index_bits: int) -> tuple[str, dict]:
    """``csr`` when it is smaller than dense fp32 (density * (32 + index_bits) < 32), else ``fp32``."""
    density = float((weight != 0).float().mean()) if weight.numel() else 0.0
    if density * (32 + index_bits) < 32:
        return "csr", {"index_bits": index_bits, "values": "fp32"}
    return "fp32", {}


class MaskedLayer(CompressedLayer):
    """Shared by the pruned layers: a non-persistent ``mask`` rebuilt from ``weight != 0`` on load."""

    index_bits: int
    schedule: "MagnitudeSchedule | None" = None

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)
        self.path, self._csr = "dense", None

    def set_mask(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask)
        with torch.no_grad():
            self.weight.mul_(self.mask)
        self._csr = None

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def after_step(self) -> None:
        with torch.no_grad():
            self.weight.mul_(self.mask)
        if self.schedule is not None:
            self.schedule.tick(self)

    def sparsity(self) -> float:
        return float((~self.mask).float().mean())

    def storage_codecs(self) -> dict:
        return {"weight": sparse_codec(self.weight, self.index_bits)}

    def train(self, mode: bool = True):
        if mode:
            self._csr = None
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.mask.copy_(self.weight != 0)


@register_layer
class PrunedConv2d(MaskedLayer, nn.Conv2d):
    index_bits = CONV_INDEX_BITS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mask()

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "PrunedConv2d":
        with torch.device("meta"):  # skip the random init of a layer about to be overwritten
            layer = cls(**conv_config(conv))
        layer = layer.to_empty(device=conv.weight.device)
        layer.load_state_dict(conv.state_dict())
        return layer

    def layer_config(self) -> dict:
        return conv_config(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight() if self.training else self.weight, self.bias)


@register_layer
class PrunedLinear(MaskedLayer, nn.Linear):
    index_bits = FC_INDEX_BITS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mask()

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "PrunedLinear":
        with torch.device("meta"):
            layer = cls(**linear_config(linear))
        layer = layer.to_empty(device=linear.weight.device)
        layer.load_state_dict(linear.state_dict())
        return layer

    def layer_config(self) -> dict:
        return linear_config(self)

    def freeze(self) -> str:
        """Pick the faster inference path for this layer by timing it at batch 1."""
        self.path = choose_path(self.weight.detach(), None if self.bias is None else self.bias.detach())[0]
        self._csr = CSRWeight(self.weight) if self.path == "csr" else None
        return self.path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self.masked_weight(), self.bias)
        if self._csr is not None and x.dim() == 2 and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return csr_linear(x, self._csr, self.bias)
        return F.linear(x, self.weight, self.bias)




def select_layers(model: nn.Module, layers="all", exclude=()) -> dict[str, nn.Module]:
    """{path: Conv2d/Linear} chosen by the toolkit's rule (``surgery.select``; pruned layers count as theirs)."""
    return dict(surgery.select(model, layers, exclude=exclude))


def _scale(weight: torch.Tensor) -> float:
    """Standard deviation of a layer's remaining (non-zero) weights: Han's per-layer threshold unit."""
    alive = weight[weight != 0]
    return float(alive.std()) + 1e-12 if alive.numel() > 1 else 1.0


def magnitude_masks(weights: dict[str, torch.Tensor], targets: dict[str, float], scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks: per layer ``|w| > quantile_s(|w|)``. Global scope (Han et al. 2015): one quality parameter
    ``q`` for all layers, ``|w| > q * std(layer)``, with ``q`` the ``s``-quantile of ``|w| / std(layer)`` over
    all chosen weights; every layer keeps at least 1% of its weights."""
    def threshold(values: torch.Tensor, sparsity: float) -> float:
        k = int(round(sparsity * values.numel()))  # k-th smallest |w| (numpy's introselect: fast on 75M values)
        return float("-inf") if k == 0 else float(np.partition(values.float().cpu().numpy(), k - 1)[k - 1])
    if scope == "global":
        sparsity = next(iter(targets.values()))
        scaled = {p: w.abs() / _scale(w) for p, w in weights.items()}
        t = threshold(torch.cat([v.reshape(-1) for v in scaled.values()]), sparsity)
        masks = {p: v > t for p, v in scaled.items()}
        for p, w in weights.items():  # one threshold must not empty a layer: keep its top 1% at least
            if w.numel() and masks[p].float().mean() < 1 - MAX_LAYER_SPARSITY:
                masks[p] = w.abs() > threshold(w.abs().reshape(-1), MAX_LAYER_SPARSITY)
        return masks
    return {p: w.abs() > threshold(w.abs().reshape(-1), targets[p]) for p, w in weights.items()}


class MagnitudeSchedule:
    """Iterative pruning during fine-tuning: round r (1..R) reaches sparsity ``1 - (1 - s)^(r/R)``."""

    def __init__(self, layers: dict[str, MaskedLayer], targets: dict[str, float], scope: str, rounds: int,
                 steps_per_round: int):
        self.layers, self.targets, self.scope = layers, targets, scope
        self.rounds, self.steps_per_round, self.round, self.steps = rounds, steps_per_round, 0, 0
        self.first = next(iter(layers.values()))

    def target(self, p: str, round_: int) -> float:
        return 1.0 - (1.0 - self.targets[p]) ** (round_ / self.rounds)

    def prune_round(self) -> None:
        self.round += 1
        with torch.no_grad():
            weights = {p: m.weight.detach() for p, m in self.layers.items()}  # pruned ones are already 0
            masks = magnitude_masks(weights, {p: self.target(p, self.round) for p in self.layers}, self.scope)
        for p, m in self.layers.items():
            m.set_mask(masks[p] & m.mask)

    def tick(self, layer) -> None:
        if layer is not self.first or self.round >= self.rounds:
            return
        self.steps += 1
        if self.steps >= self.round * self.steps_per_round:
            self.prune_round()


def check_fraction(name: str, value, low_open: bool = False) -> float:
    if not isinstance(value, (int, float)) or not (0 < value < 1 if low_open else 0 <= value < 1):
        raise ValueError(f"{name}={value!r} must be a number in {'(0' if low_open else '[0'}, 1)")
    return float(value)


def prune_magnitude(model: nn.Module, sparsity: float = 0.9, scope: str = "global", layers="all",
                    per_layer: dict | None = None, rounds: int = 1, steps_per_round: int = 100,
                    exclude=()) -> nn.Module:
    """Han et al. 2015 magnitude pruning (see the module docstring); returns the model with pruned layers."""
    check_fraction("sparsity", sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r} must be 'global' or 'layer'")
    if not (isinstance(rounds, int) and rounds >= 1 and isinstance(steps_per_round, int) and steps_per_round >= 1):
        raise ValueError(f"rounds={rounds!r} and steps_per_round={steps_per_round!r} must be integers >= 1")
    chosen = select_layers(model, layers, exclude)
    per_layer = dict(per_layer or {})
    unknown = sorted(set(per_layer) - set(chosen))
    if unknown:
        raise ValueError(f"per_layer names {unknown} are not among the pruned layers {sorted(chosen)}")
    targets = {p: check_fraction(f"per_layer[{p}]", per_layer.get(p, sparsity)) for p in chosen}
    if per_layer:
        scope = "layer"
    pruned = {}
    for path, module in chosen.items():
        layer = module if isinstance(module, MaskedLayer) else \
            (PrunedConv2d if isinstance(module, nn.Conv2d) else PrunedLinear).from_float(module)
        model = surgery.replace(model, path, layer)
        pruned[path] = layer
    schedule = MagnitudeSchedule(pruned, targets, scope, rounds, steps_per_round)
    schedule.prune_round()
    for layer in pruned.values():
        layer.schedule = schedule if rounds > 1 else None
    return model


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """{path: fraction of zero weights} for every pruned layer."""
    return {p: m.sparsity() for p, m in model.named_modules() if isinstance(m, MaskedLayer)}


def prune_to_inference(model: nn.Module) -> nn.Module:
    """Finish pending rounds' masks, then pick dense or CSR per fc layer by timing (see kernels.sparse)."""
    paths = {}
    for path, module in model.named_modules():
        if isinstance(module, MaskedLayer):
            module.schedule = None
            with torch.no_grad():
                module.weight.mul_(module.mask)
            if isinstance(module, PrunedLinear):
                module.eval()
                paths[path] = module.freeze()
    model.metadata = {**getattr(model, "metadata", {}), "sparse_paths": paths}
    return model


register(MethodInfo(
    name="prune-magnitude", paper="Han et al. 2015, Learning both weights and connections (survey §2.3)",
    size="real", speed="real", family="prune",
    handles="every Conv2d/Linear weight (unstructured masks); any structure",
    description="unstructured magnitude pruning, masks kept through fine-tuning; CSR storage with relative "
                "indices; fc layers run torch CSR at batch 1 only where timing shows it wins"),
    prune_magnitude, to_inference=prune_to_inference)
