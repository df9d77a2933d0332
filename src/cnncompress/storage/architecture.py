"""Module trees as JSON: which layers a compressed model has, so a file can rebuild it without pickle.

``describe(module)`` -> ``{"type", "config", "children"}`` for allow-listed types only (torch's common layers
and classes registered with ``register_layer``); ``construct(description)`` builds it back. ``diff(model,
skeleton)`` lists the sub-trees where a compressed model differs from the freshly built float model, which is
all a ``.ccz`` needs to store besides the model spec.
"""
from __future__ import annotations

from typing import Callable

from torch import nn


def _conv_config(m: nn.Conv2d) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}


def _bn_config(m) -> dict:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _pool_config(m) -> dict:
    return {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding, "ceil_mode": m.ceil_mode}


LAYERS: dict[str, tuple[type, Callable[[nn.Module], dict]]] = {
    "Conv2d": (nn.Conv2d, _conv_config),
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_config),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_config),
    "ReLU": (nn.ReLU, lambda m: {"inplace": m.inplace}),
    "Identity": (nn.Identity, lambda m: {}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}),
    "MaxPool2d": (nn.MaxPool2d, _pool_config),
    "AvgPool2d": (nn.AvgPool2d, _pool_config),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {"output_size": m.output_size}),
    "LocalResponseNorm": (nn.LocalResponseNorm, lambda m: {"size": m.size, "alpha": m.alpha, "beta": m.beta,
                                                            "k": m.k}),
    "Sequential": (nn.Sequential, lambda m: {}),
}
NAMES: dict[type, str] = {cls: name for name, (cls, _) in LAYERS.items()}


def _default_config(module: nn.Module) -> dict:
    if hasattr(module, "layer_config"):
        return module.layer_config()
    return dict(module.build_config)


def register_layer(cls: type, get_config: Callable[[nn.Module], dict] | None = None, name: str | None = None):
    """Allow ``cls`` in files. ``get_config(module)`` returns its constructor kwargs; by default
    ``module.layer_config()`` if the class has it, else the dict ``module.build_config`` saved by ``__init__``."""
    key = name or cls.__name__
    LAYERS[key] = (cls, get_config or _default_config)
    NAMES[cls] = key
    return cls


def type_name(module: nn.Module) -> str:
    cls = type(module)
    if cls not in NAMES:
        raise TypeError(f"layer type {cls.__name__} is not registered for .ccz files (storage.register_layer)")
    return NAMES[cls]


def signature(module: nn.Module) -> tuple:
    name = type_name(module)
    return name, LAYERS[name][1](module), tuple(name for name, _ in module.named_children())


def describe(module: nn.Module) -> dict:
    name = type_name(module)
    return {"type": name, "config": LAYERS[name][1](module),
            "children": {child_name: describe(child) for child_name, child in module.named_children()}}


def construct(description: dict) -> nn.Module:
    """Build a module from ``describe`` output; only registered types, only keyword config values."""
    if not isinstance(description, dict) or description.get("type") not in LAYERS:
        raise ValueError(f"unknown layer type {description.get('type') if isinstance(description, dict) else description!r}")
    cls, _ = LAYERS[description["type"]]
    config = description.get("config", {})
    children = description.get("children", {})
    if not isinstance(config, dict) or not isinstance(children, dict):
        raise ValueError("layer config and children must be objects")
    if cls is nn.Sequential:
        module = nn.Sequential()
        for child_name, child in children.items():
            module.add_module(child_name, construct(child))
        return module
    try:
        module = cls(**config)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"bad config for {description['type']}: {error}") from error
    for child_name, child in children.items():
        setattr(module, child_name, construct(child))
    return module


def diff(model: nn.Module, skeleton: nn.Module) -> dict[str, dict]:
    """Topmost sub-trees of ``model`` that differ from ``skeleton``: {path: describe(sub-tree)}."""
    reference = dict(skeleton.named_modules())
    changed: dict[str, dict] = {}
    for path, module in model.named_modules():
        if any(path == p or path.startswith(p + ".") or p == "" for p in changed):
            continue
        other = reference.get(path)
        if other is None or type(other) is not type(module) or signature(other) != signature(module):
            changed[path] = describe(module)
    return changed


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Replace the module at dotted ``path`` (the whole model when path is empty); returns the root."""
    if path == "":
        return module
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)
    return model


def apply_diff(skeleton: nn.Module, changes: dict[str, dict]) -> nn.Module:
    for path in sorted(changes, key=lambda p: p.count(".") if p else -1):
        skeleton = set_submodule(skeleton, path, construct(changes[path]))
    return skeleton
