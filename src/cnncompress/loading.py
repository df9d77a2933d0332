"""One loader for every way a user names a model: ``load_model(spec)``.

``spec`` is one of: a pretrained name (``fer-minixception``), a ``.ccz`` file, a ``model.safetensors`` written by
``cnncompress train`` (the architecture is in its metadata), a run folder holding ``model.ccz`` or
``model.safetensors`` (the ``.ccz`` wins), or a Keras mini-Xception weight file (``.hdf5``/``.h5``). The model
comes back in eval mode with ``.metadata`` (classes, mean, std, dataset, ...) where the source has it;
``input_format(model)`` says what images it expects. A spec that names nothing loadable is an ``InputError``
of one line naming it. ``distill``, ``compress``, ``export`` and ``predict`` all load through here.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from . import models, storage
from .errors import input_error
from .models.mini_xception import EMOTION_CLASSES, PRETRAINED, load_keras_weights
from .train import load_weights

RUN_FOLDER_FILES = ("model.ccz", "model.safetensors")  # what a run folder may hold, in order of preference


def model_file(spec: str | Path) -> Path | None:
    """The file ``spec`` names (for a run folder: its ``model.ccz``, else its ``model.safetensors``); None for a
    pretrained name."""
    if str(spec) in PRETRAINED:
        return None
    path = Path(spec)
    if path.is_dir():
        found = [path / name for name in RUN_FOLDER_FILES if (path / name).is_file()]
        if not found:
            raise input_error(path, f"folder holds neither {' nor '.join(RUN_FOLDER_FILES)}")
        return found[0]
    if path.exists() and not path.is_file():
        raise input_error(spec, "not a regular file (a FIFO or device is never read)")
    if not path.is_file():
        raise input_error(spec, f"no such model file or folder (pretrained names: {', '.join(sorted(PRETRAINED))})")
    return path


def load_model(spec: str | Path) -> nn.Module:
    """The model ``spec`` names (see the module docstring), in eval mode, with ``.metadata`` where known."""
    path = model_file(spec)
    if path is None:
        return models.load_pretrained(str(spec))
    suffix = path.suffix.lower()
    if suffix == ".ccz":
        model = storage.load(path)
    elif suffix == ".safetensors":
        model = _load_safetensors(path)
    elif suffix in (".hdf5", ".h5"):
        model = models.build("mini_xception", num_classes=7, in_channels=1, input_size=64)
        load_keras_weights(model, path.read_bytes(), str(path))
        model.metadata = {"classes": list(EMOTION_CLASSES), "mean": 0.5, "std": 0.5}
    else:
        raise input_error(path, "expected a .ccz, a .safetensors or a Keras .hdf5/.h5 file, a run folder or a "
                                f"pretrained name ({', '.join(sorted(PRETRAINED))})")
    return model.eval()


def _load_safetensors(path: Path) -> nn.Module:
    """A float model saved by ``train.save_weights``, with the ``cnncompress.metadata`` it was saved with."""
    from safetensors import safe_open
    model = load_weights(path)
    with safe_open(str(path), framework="pt") as handle:
        model.metadata = json.loads((handle.metadata() or {}).get("cnncompress.metadata", "{}"))
    return model


def input_format(model: nn.Module) -> dict:
    """What images a model expects: input_size, channels, mean, std, classes (from .metadata / .spec)."""
    meta, spec = dict(getattr(model, "metadata", {}) or {}), dict(getattr(model, "spec", {}) or {})
    return {"input_size": int(meta.get("input_size", spec.get("input_size", 64))),
            "channels": int(meta.get("channels", spec.get("in_channels", 1))),
            "mean": float(meta.get("mean", 0.5)), "std": float(meta.get("std", 0.5)),
            "classes": list(meta.get("classes") or [str(i) for i in range(int(spec.get("num_classes", 0)))])}
