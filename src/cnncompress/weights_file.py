"""A float model as one safetensors file: its weights, its build spec (``cnncompress.spec``) and optional
metadata. Nothing is unpickled, and nothing is allocated from the file's claims before they are checked: the
spec's model is first built on the meta device and its tensor shapes compared with the shapes the file holds, so
a spec asking for a model larger than the file (a hostile ``num_classes``) is refused without allocating it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .checkpoint_io import atomic_safetensors
from .errors import InputError, input_error


def save_weights(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Save a float model's weights with safetensors; its build spec goes into the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"cnncompress.spec": json.dumps(getattr(model, "spec", {})), **(extra or {})}
    atomic_safetensors(path, model.state_dict(), metadata)
    return path


def load_weights(path: str | Path) -> nn.Module:
    """Rebuild a float model saved by ``save_weights``: shapes checked on the meta device before allocating."""
    from safetensors import safe_open

    from .models import build_from_spec
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            spec = json.loads((handle.metadata() or {}).get("cnncompress.spec", "{}"))
            held = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise input_error(path, f"not a valid safetensors model ({type(error).__name__}: {error})") from error
    if not isinstance(spec, dict):
        raise input_error(path, "cnncompress.spec in the metadata is not a mapping")
    if not spec:
        raise input_error(path, "no cnncompress.spec in the metadata; not saved by cnncompress")
    try:
        with torch.device("meta"):
            probe = build_from_spec(spec)
    except InputError as error:
        raise input_error(path, f"bad cnncompress.spec: {error}") from error
    except (TypeError, ValueError, RuntimeError) as error:
        raise input_error(path, f"bad cnncompress.spec {spec} ({type(error).__name__}: {error})") from error
    wanted = {name: list(tensor.shape) for name, tensor in probe.state_dict().items()}
    if wanted != held:
        wrong = sorted(set(wanted) ^ set(held)) or [k for k in wanted if wanted[k] != held[k]]
        raise input_error(path, f"weights do not fit {spec.get('name')}: {len(wrong)} tensor(s) differ, first "
                                f"{wrong[0]} (spec wants {wanted.get(wrong[0])}, file holds {held.get(wrong[0])})")
    model = build_from_spec(spec)  # every tensor it allocates is one the file holds: bounded by the file's size
    with safe_open(str(path), framework="pt") as handle:
        model.load_state_dict({key: handle.get_tensor(key) for key in handle.keys()})
    return model.eval()
