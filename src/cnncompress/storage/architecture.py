"""Module trees as JSON: which layers a compressed model has, so a file can rebuild it without pickle.

``describe(module)`` -> ``{"type", "config", "children"}`` for allow-listed types only (the registry of
``cnncompress.layers``: torch's common layers and classes registered with ``register_layer``);
``construct(description)`` builds it back. ``diff(model, skeleton)`` lists the sub-trees where a compressed model differs from the freshly built float model, which is
all a ``.ccz`` needs to store besides the model spec.
"""
from __future__ import annotations

from torch import nn

from cnncompress.layers import LAYERS, NAMES, register_layer, type_name  # noqa: F401  (re-exported for storage users)
from cnncompress.surgery import replace


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


def _same(module: nn.Module, other: nn.Module | None) -> bool:
    """``module`` is ``other`` as the skeleton builds it: the same type and configuration. A type that is not
    registered (a user's own container) has no readable configuration: the same class with the same children's
    names counts as the same (its children are compared one by one)."""
    if other is None or type(other) is not type(module):
        return False
    if type(module) not in NAMES:  # new children (an exit head) are sub-trees of their own: written as such
        names = [n for n, _ in module.named_children()]
        return [n for n in names if n in other._modules] == [n for n, _ in other.named_children()]
    return signature(other) == signature(module)


def diff(model: nn.Module, skeleton: nn.Module) -> dict[str, dict]:
    """Topmost sub-trees of ``model`` that differ from ``skeleton``: {path: describe(sub-tree)}. A differing
    sub-tree must be made of registered types (a ``ValueError`` names the first layer that is not)."""
    reference = dict(skeleton.named_modules())
    changed: dict[str, dict] = {}
    for path, module in model.named_modules():
        if any(path == p or path.startswith(p + ".") or p == "" for p in changed):
            continue
        if not _same(module, reference.get(path)):
            try:
                changed[path] = describe(module)
            except TypeError as error:
                raise ValueError(f"layer {path or '(root)'} ({type(module).__name__}) differs from the float network "
                                 f"and cannot be written: {error}") from error
    return changed


def apply_diff(skeleton: nn.Module, changes: dict[str, dict]) -> nn.Module:
    for path in sorted(changes, key=lambda p: p.count(".") if p else -1):
        skeleton = replace(skeleton, path, construct(changes[path]))
    return skeleton

