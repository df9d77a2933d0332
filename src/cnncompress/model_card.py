"""The model card: what a model carries beside its weights, read and copied in this one place.

- ``spec``: the model's build settings (``{"name", "num_classes", "in_channels", "input_size", "width", ...}``),
  what ``models.build_from_spec`` rebuilds it from (``None`` for a network built by the user's own code);
- ``metadata``: facts for whoever uses it (``classes``, ``mean``, ``std``, ``float_codec``, ``bf16_compute``, ...);
- ``compression_history``: ``[{"method", "config"}, ...]``, every method applied, in order (``.ccz`` files keep it).

A wrapper that stands for a model (a deployed engine, an early-exit net, a compressed copy) carries the same card:
``carry(source, target)`` copies it (deep copies: the two never share a dict). A leaf: imports nothing of the
package.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

FIELDS = ("spec", "metadata", "compression_history")
USER_MODEL = "user"
"""``spec["name"]`` of a network built by the user's own code (``models.entry_point``), not a registered model."""
_SKELETON = "_cnncompress_float_skeleton"


@dataclass
class ModelCard:
    spec: dict | None = None
    metadata: dict = field(default_factory=dict)
    compression_history: list = field(default_factory=list)


def read(model) -> ModelCard:
    """The card of ``model`` (empty parts where it has none)."""
    return ModelCard(getattr(model, "spec", None), dict(getattr(model, "metadata", None) or {}),
                     list(getattr(model, "compression_history", None) or []))


def is_user(spec) -> bool:
    """True for the spec of a user's own network (rebuilt by the user's code, never by name)."""
    return isinstance(spec, dict) and spec.get("name") == USER_MODEL


def float_skeleton(model):
    """The float network a compressed user network started from (on the meta device; ``None`` when not known).
    ``.ccz`` files store only the layers that differ from it."""
    held = getattr(model, "__dict__", {}).get(_SKELETON)
    return held[0] if held else None


def set_float_skeleton(target, skeleton) -> None:
    """Give ``target`` the float network it was compressed from (held in a tuple: not a torch sub-module)."""
    object.__setattr__(target, _SKELETON, (skeleton,))


def keep_float_skeleton(source, target) -> None:
    """Let ``target`` (compressed from the user network ``source``) remember the float skeleton: ``source``'s own
    if it has one, else ``source`` itself when it has no history (a meta-device copy, no weights). Held in a
    tuple, so torch does not register it as a sub-module."""
    skeleton = float_skeleton(source)
    if skeleton is None and not getattr(source, "compression_history", None):
        import copy

        skeleton = copy.deepcopy(source).to("meta")
    if skeleton is not None:
        set_float_skeleton(target, skeleton)


def carry(source, target, **metadata):
    """Copy ``source``'s card onto ``target`` (the parts ``source`` has), ``metadata`` merged into its metadata;
    returns ``target``."""
    for name in FIELDS:
        if name in getattr(source, "__dict__", {}) or hasattr(source, name):
            setattr(target, name, copy.deepcopy(getattr(source, name)))
    held = getattr(source, "__dict__", {}).get(_SKELETON)
    if held:
        object.__setattr__(target, _SKELETON, held)
    if metadata:
        target.metadata = {**dict(getattr(target, "metadata", None) or {}), **metadata}
    return target
