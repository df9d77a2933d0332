"""The layer contract: which layer types exist for the toolkit, how each is rebuilt, what a compressed layer offers.

Two things live here, and nothing above them (this module imports only torch):

* **The layer registry** (``LAYERS``): type name -> (class, ``config_of``), where ``config_of(module)`` returns
  the keyword arguments that rebuild the module. torch's common layers are registered below; models register
  their containers and methods their compressed layers with ``@register_layer``. The ``.ccz`` reader builds
  only types from this registry, so a file can never name an arbitrary class. ``layer_config(module)`` is the
  one place a layer's constructor configuration is read.
* **The compressed-layer contract** (``CompressedLayer``): every layer a method swaps in subclasses it (next to
  its torch base, e.g. ``class BinaryConv2d(CompressedLayer, nn.Conv2d)``) and provides

  - ``from_float(layer, **options)``: the classmethod converter from the layer it replaces;
  - ``layer_config()``: its constructor kwargs (saved in the file's manifest);
  - ``storage_codecs()``: ``{local tensor name: (codec, options)}`` for tensors not stored as plain floats;
  - ``after_step()``: called by the trainer after every optimiser step (clip, re-mask, re-quantise).

  The defaults do nothing (no codecs, no per-step work), so a layer only writes what it changes.
"""
from __future__ import annotations

from typing import Callable

from torch import nn


class CompressedLayer:
    """Mixin declaring the compressed-layer contract (see the module docstring). Use before the torch base."""

    @classmethod
    def from_float(cls, layer: nn.Module, **options) -> "CompressedLayer":
        raise NotImplementedError(f"{cls.__name__} has no from_float converter")

    def layer_config(self) -> dict:
        if hasattr(self, "build_config"):
            return dict(self.build_config)
        raise NotImplementedError(f"{type(self).__name__} must define layer_config()")

    def storage_codecs(self) -> dict[str, tuple[str, dict]]:
        return {}

    def after_step(self) -> None:
        return None


class SequentialForward:
    """Marker for a container whose ``forward`` runs its children one after another in registration order (as
    ``nn.Sequential`` does), so that tools following channels through the network (filter pruning) may walk it."""


class BranchConcat:
    """Marker for a block whose children run as ``stages``: each stage is a tuple of child names that all read the
    previous stage's output; their outputs are concatenated on channels (SqueezeNet's fire module:
    ``(("squeeze",), ("expand1x1", "expand3x3"))``). Children not named are per-channel (ReLU) and pass through."""

    stages: tuple[tuple[str, ...], ...] = ()

    def channels_changed(self) -> None:
        """Called after a tool (filter pruning) changed the channel counts of the children: update whatever the
        block's constructor configuration records about them."""


def conv_config(m: nn.Conv2d) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}


def linear_config(m: nn.Linear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _bn_config(m) -> dict:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _pool_config(m) -> dict:
    return {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding, "ceil_mode": m.ceil_mode}


def lrn_config(m: nn.LocalResponseNorm) -> dict:
    return {"size": m.size, "alpha": m.alpha, "beta": m.beta, "k": m.k}


LAYERS: dict[str, tuple[type, Callable[[nn.Module], dict]]] = {
    "Conv2d": (nn.Conv2d, conv_config),
    "Linear": (nn.Linear, linear_config),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_config),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_config),
    "ReLU": (nn.ReLU, lambda m: {"inplace": m.inplace}),
    "Identity": (nn.Identity, lambda m: {}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}),
    "MaxPool2d": (nn.MaxPool2d, _pool_config),
    "AvgPool2d": (nn.AvgPool2d, _pool_config),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {"output_size": m.output_size}),
    "LocalResponseNorm": (nn.LocalResponseNorm, lrn_config),
    "Sequential": (nn.Sequential, lambda m: {}),
}
NAMES: dict[type, str] = {cls: name for name, (cls, _) in LAYERS.items()}


def _declared_config(module: nn.Module) -> dict:
    if isinstance(module, CompressedLayer):
        return module.layer_config()
    return dict(module.build_config)


def register_layer(cls: type | None = None, get_config: Callable[[nn.Module], dict] | None = None,
                   name: str | None = None):
    """Allow ``cls`` in files (usable as ``@register_layer``). ``get_config(module)`` returns its constructor
    kwargs; by default ``module.layer_config()`` for a ``CompressedLayer``, else the dict ``module.build_config``
    its ``__init__`` saved."""
    def register(klass: type) -> type:
        key = name or klass.__name__
        LAYERS[key] = (klass, get_config or _declared_config)
        NAMES[klass] = key
        return klass
    return register if cls is None else register(cls)


def type_name(module: nn.Module) -> str:
    cls = type(module)
    if cls not in NAMES:
        raise TypeError(f"layer type {cls.__name__} is not registered for .ccz files (layers.register_layer)")
    return NAMES[cls]


def layer_config(module: nn.Module) -> dict:
    """The constructor kwargs that rebuild ``module`` (the one place a layer's configuration is read)."""
    return LAYERS[type_name(module)][1](module)


def base_config(module: nn.Module, base: type) -> dict:
    """The constructor kwargs of ``module`` read as its torch ``base`` (``Conv2d``/``Linear``/...), e.g. for a
    compressed subclass whose own config adds options to the base's."""
    return LAYERS[NAMES[base]][1](module)


def compressed_layers(model: nn.Module) -> list[tuple[str, CompressedLayer]]:
    """``(path, layer)`` of every ``CompressedLayer`` in ``model``."""
    return [(path, module) for path, module in model.named_modules() if isinstance(module, CompressedLayer)]


def after_step(model: nn.Module) -> None:
    """Run every compressed layer's ``after_step()`` (the trainer calls this after each optimiser step)."""
    for _, layer in compressed_layers(model):
        layer.after_step()
