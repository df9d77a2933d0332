"""Model registry: ``build(name, num_classes, in_channels, input_size, width)``.

Every built model carries ``model.spec`` (a JSON-able dict of the build arguments) so that files can
rebuild its skeleton.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from cnncompress.errors import InputError

BUILDERS: dict[str, Callable[..., nn.Module]] = {}
DEFAULT_BATCH_SIZE: dict[str, int] = {}
DEFAULT_TRAINING: dict[str, dict] = {}
"""Per model, the recommended baseline training settings (``TrainConfig`` keys; ``train.preset(name)`` turns them
into a config). Chosen on the validation split of mnist5k at the CPU input sizes; the measurements are in README."""
DEFAULT_FINETUNE: dict[str, dict] = {}
"""Per model, what fine-tuning after compression changes in ``DEFAULT_TRAINING`` (``train.preset(name,
"finetune")``; on top of ``train.FINETUNE``)."""
MAX_WIDTH = 8.0


def register_model(name: str, builder: Callable[..., nn.Module], batch_size: int = 32,
                   training: dict | None = None, finetune: dict | None = None) -> None:
    """Register ``builder`` as ``name``; ``batch_size``: the papers' batch (``DEFAULT_BATCH_SIZE``: train-step
    timings, fine-tuning); ``training``: the recommended baseline ``TrainConfig`` settings (``DEFAULT_TRAINING``;
    its batch size defaults to ``batch_size``); ``finetune``: what fine-tuning a compressed model changes in it
    (``DEFAULT_FINETUNE``)."""
    BUILDERS[name] = builder
    DEFAULT_BATCH_SIZE[name] = batch_size
    DEFAULT_TRAINING[name] = {"batch_size": batch_size, **(training or {})}
    DEFAULT_FINETUNE[name] = dict(finetune or {})


def build(name: str, num_classes: int = 8, in_channels: int = 3, input_size: int = 224, width: float = 1.0,
          **extra) -> nn.Module:
    """Build model ``name``; raises InputError for unknown names or bad sizes. ``name`` may be a user network's
    entry point (``FILE.py:FUNCTION`` or ``package.module:FUNCTION``, ``models.entry_point``): it is called with
    those of ``num_classes``, ``in_channels``, ``input_size``, ``width`` its signature takes."""
    from cnncompress.models.entry_point import build_for, is_entry_point
    if name not in BUILDERS and is_entry_point(name):
        return build_for(name, num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width)
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
    """The registered model ``spec`` describes. A user network's spec is refused: its file records an entry point,
    but a file is data, never a reason to import code (the caller names the network: ``storage.load(path,
    model=...)``, ``--model``)."""
    if spec.get("name") == "user":
        raise InputError(f"a user network ({spec.get('class', '?')}): name its builder to rebuild it "
                         f"(--model {spec.get('entry_point') or 'FILE.py:FUNCTION'})")
    return build(**spec)


def available() -> list[str]:
    return sorted(BUILDERS)
