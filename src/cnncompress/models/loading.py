"""One loader for every way a user names a model: ``load_model(source, entry=None, weights=None)``.

``source`` is one of: a pretrained name (``fer-minixception``), a ``.ccz`` file, a ``model.safetensors`` written by
``cnncompress train`` (the architecture is in its metadata), a run folder holding ``model.ccz`` or
``model.safetensors`` (the ``.ccz`` wins), or a Keras mini-Xception weight file (``.hdf5``/``.h5``). The model
comes back in eval mode with ``.metadata`` (classes, mean, std, dataset, ...) where the source has it;
``input_format(model)`` says what images it expects. A spec that names nothing loadable is an ``InputError``
of one line naming it. ``distill``, ``compress``, ``export`` and ``predict`` all load through here.

A user's own network: ``entry`` (``--model FILE.py:FUNCTION`` or ``package.module:FUNCTION``, named by the caller)
builds it (``models.entry_point``); ``weights`` (``--weights``: a safetensors state dict, or one written by
cnncompress) fills it; a ``.ccz`` / ``.safetensors`` written for a user network is rebuilt with ``entry`` (the file
records its entry point, but is never allowed to import it). A ``source`` that is an entry point and no file
(``distill --teacher nets.py:big``) names the network the same way as ``entry``.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from cnncompress import models, storage
from cnncompress.errors import InputError, input_error
from cnncompress.model_card import is_user
from cnncompress.models.entry_point import build_user, check_outputs, is_entry_point, resolve
from cnncompress.models.mini_xception import EMOTION_CLASSES, PRETRAINED, load_keras_weights
from cnncompress.storage.weights_file import load_weights

RUN_FOLDER_FILES = ("model.ccz", "model.safetensors")  # what a run folder may hold, in order of preference


def model_file(source: str | Path) -> Path | None:
    """The file ``source`` names (for a run folder: its ``model.ccz``, else its ``model.safetensors``); None for a
    pretrained name."""
    if str(source) in PRETRAINED:
        return None
    path = Path(source)
    if path.is_dir():
        found = [path / name for name in RUN_FOLDER_FILES if (path / name).is_file()]
        if not found:
            raise input_error(path, f"folder holds neither {' nor '.join(RUN_FOLDER_FILES)}")
        return found[0]
    if path.exists() and not path.is_file():
        raise input_error(source, "not a regular file (a FIFO or device is never read)")
    if not path.is_file():
        raise input_error(source, f"no such model file or folder (pretrained names: {', '.join(sorted(PRETRAINED))})")
    return path


def load_model(source: str | Path | None = None, entry: str | None = None, weights: str | Path | None = None
               ) -> nn.Module:
    """The model ``source`` (and / or ``entry``, ``weights``) names (see the module docstring), in eval mode, with
    ``.metadata`` where known."""
    if source is not None and entry is None and is_entry_point(str(source)) and not Path(source).exists():
        source, entry = None, str(source)
    if source is None:
        if entry is None:
            raise InputError("name a model: a .ccz / .safetensors file, a run folder, a pretrained name, or "
                             "--model FILE.py:FUNCTION (with --weights FILE.safetensors)")
        model = build_user(entry)
        if weights is not None:
            fill_weights(model, weights)
        return model.eval()
    if weights is not None:
        raise InputError(f"--weights {weights}: give it with --model FILE.py:FUNCTION, not with a model file "
                         f"({source} holds its own weights)")
    path = model_file(source)
    if path is None:
        return models.load_pretrained(str(source))
    builder = resolve(entry) if entry else None
    suffix = path.suffix.lower()
    if suffix == ".ccz":
        model = storage.load(path, model=builder)
    elif suffix == ".safetensors":
        model = _load_safetensors(path, builder)
    elif suffix in (".hdf5", ".h5"):
        model = models.build("mini_xception", num_classes=7, in_channels=1, input_size=64)
        load_keras_weights(model, path.read_bytes(), str(path))
        model.metadata = {"classes": list(EMOTION_CLASSES), "mean": 0.5, "std": 0.5}
    else:
        raise input_error(path, "expected a .ccz, a .safetensors or a Keras .hdf5/.h5 file, a run folder or a "
                                f"pretrained name ({', '.join(sorted(PRETRAINED))})")
    return model.eval()


def fill_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model`` (in place); every tensor name and shape must fit it, checked
    before a tensor is read (one-line ``InputError`` naming the file and the first misfit)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            held = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
            wanted = {key: list(t.shape) for key, t in model.state_dict().items()}
            if held != wanted:
                wrong = sorted(set(wanted) ^ set(held)) or [k for k in wanted if wanted[k] != held[k]]
                raise input_error(path, f"weights do not fit {type(model).__name__}: {len(wrong)} tensor(s) differ, "
                                        f"first {wrong[0]} (network {wanted.get(wrong[0])}, file {held.get(wrong[0])})")
            model.load_state_dict({key: handle.get_tensor(key) for key in handle.keys()})
    except InputError:
        raise
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise input_error(path, f"not a valid safetensors file ({type(error).__name__}: {error})") from error
    return model


def _load_safetensors(path: Path, builder=None) -> nn.Module:
    """A float model saved by ``train.save_weights``, with the ``cnncompress.metadata`` it was saved with."""
    from safetensors import safe_open
    model = load_weights(path, model=builder)
    with safe_open(str(path), framework="pt") as handle:
        model.metadata = json.loads((handle.metadata() or {}).get("cnncompress.metadata", "{}"))
    return model


def input_format(model: nn.Module) -> dict:
    """What images a model expects: input_size, channels, mean, std, classes (from .metadata / .spec; default 64x64
    grey, mean = std = 0.5). A user network whose card names no classes (built from its entry point alone) has
    them counted by one forward of a blank image of that shape (``"0"``, ``"1"``, ...; none if it cannot run one)."""
    meta, spec = dict(getattr(model, "metadata", {}) or {}), dict(getattr(model, "spec", {}) or {})
    fmt = {"input_size": int(meta.get("input_size", spec.get("input_size", 64))),
           "channels": int(meta.get("channels", spec.get("in_channels", 1))),
           "mean": float(meta.get("mean", 0.5)), "std": float(meta.get("std", 0.5)),
           "classes": list(meta.get("classes") or [str(i) for i in range(int(spec.get("num_classes", 0)))])}
    if not fmt["classes"] and is_user(spec):
        fmt["classes"] = [str(i) for i in range(_count_outputs(model, fmt))]
    return fmt


def _count_outputs(model: nn.Module, fmt: dict) -> int:
    """Scores one forward of a blank ``fmt``-shaped image gives (0 when the network cannot run it: where it is
    run, that is said in one line)."""
    import torch
    try:
        return check_outputs(model, torch.zeros(1, fmt["channels"], fmt["input_size"], fmt["input_size"]), None,
                             "a blank image")
    except InputError:
        return 0
