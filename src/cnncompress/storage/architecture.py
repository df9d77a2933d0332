"""Module trees as JSON: which layers a compressed model has, so a file can rebuild it without pickle.

``describe(module)`` -> ``{"type", "config", "children"}`` for allow-listed types only (the registry of
``cnncompress.layers``: torch's common layers and classes registered with ``register_layer``);
``construct(description)`` builds it back. ``diff(model, skeleton)`` lists the sub-trees where a compressed model differs from the freshly built float model, which is
all a ``.ccz`` needs to store besides the model spec.
"""
from __future__ import annotations

from torch import nn

from ..layers import LAYERS, NAMES, register_layer, type_name  # noqa: F401  (re-exported for storage users)
from ..surgery import replace


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


def apply_diff(skeleton: nn.Module, changes: dict[str, dict]) -> nn.Module:
    for path in sorted(changes, key=lambda p: p.count(".") if p else -1):
        skeleton = replace(skeleton, path, construct(changes[path]))
    return skeleton

