"""Model registry: ``build(name, num_classes, in_channels, input_size, width)``.

Every built model carries ``model.spec`` (a JSON-able dict of the build arguments) so that files can
rebuild its skeleton.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import InputError

BUILDERS: dict[str, Callable[..., nn.Module]] = {}
DEFAULT_BATCH_SIZE: dict[str, int] = {}
MAX_WIDTH = 8.0


def register_model(name: str, builder: Callable[..., nn.Module], batch_size: int = 32) -> None:
    BUILDERS[name] = builder
    DEFAULT_BATCH_SIZE[name] = batch_size


def build(name: str, num_classes: int = 8, in_channels: int = 3, input_size: int = 224, width: float = 1.0,
          **extra) -> nn.Module:
    """Build model ``name``; raises InputError for unknown names or bad sizes."""
    if name not in BUILDERS:
        raise InputError(f"unknown model {name!r}; known: {', '.join(sorted(BUILDERS))}")
    if not (0 < width <= MAX_WIDTH) or num_classes < 1 or in_channels < 1 or input_size < 8:
        raise InputError(f"bad model size for {name}: width={width} (0..{MAX_WIDTH}], num_classes={num_classes}, "
                         f"in_channels={in_channels}, input_size={input_size}")
    try:
        model = BUILDERS[name](num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                               width=width, **extra)
    except ValueError as error:
        raise InputError(f"cannot build {name}: {error}") from error
    model.spec = {"name": name, "num_classes": int(num_classes), "in_channels": int(in_channels),
                  "input_size": int(input_size), "width": float(width), **extra}
    return model


def build_from_spec(spec: dict) -> nn.Module:
    return build(**spec)


def available() -> list[str]:
    return sorted(BUILDERS)
