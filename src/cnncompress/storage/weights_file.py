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

from cnncompress.storage.checkpoint_io import atomic_safetensors
from cnncompress.errors import InputError, input_error


def save_weights(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Save a float model's weights with safetensors; its build spec goes into the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "spec", None) or {"name": "user", "class": type(model).__name__}
    metadata = {"cnncompress.spec": json.dumps(spec), **(extra or {})}
    atomic_safetensors(path, model.state_dict(), metadata)
    return path


def load_weights(path: str | Path, model=None) -> nn.Module:
    """Rebuild a float model saved by ``save_weights``: shapes checked on the meta device before allocating.
    ``model``: for a user's own network, the network (or its builder) the caller names (``ccz.load``'s rule)."""
    from safetensors import safe_open

    from cnncompress.model_card import is_user
    from cnncompress.storage.ccz import build_skeleton as build_from_spec, user_skeleton
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
    if not spec and model is None:
        raise input_error(path, "no cnncompress.spec in the metadata; not saved by cnncompress (a plain state dict: "
                                "give its network, --model FILE.py:FUNCTION --weights FILE)")
    user = is_user(spec) or not spec
    try:
        if user:
            probe = user_skeleton(path, spec or {"name": "user"}, model)
        else:
            with torch.device("meta"):
                probe = build_from_spec(spec)
    except InputError as error:
        if user:
            raise
        raise input_error(path, f"bad cnncompress.spec: {error}") from error
    except (TypeError, ValueError, RuntimeError) as error:
        raise input_error(path, f"bad cnncompress.spec {spec} ({type(error).__name__}: {error})") from error
    wanted = {name: list(tensor.shape) for name, tensor in probe.state_dict().items()}
    if wanted != held:
        wrong = sorted(set(wanted) ^ set(held)) or [k for k in wanted if wanted[k] != held[k]]
        raise input_error(path, f"weights do not fit {spec.get('name')}: {len(wrong)} tensor(s) differ, first "
                                f"{wrong[0]} (spec wants {wanted.get(wrong[0])}, file holds {held.get(wrong[0])})")
    if user:  # every tensor it allocates is one the file holds (shapes checked above)
        import copy
        built = copy.deepcopy(model) if isinstance(model, nn.Module) else model(**(spec.get("kwargs") or {}))
        built.spec = spec or {"name": "user", "class": type(built).__name__}
    else:
        built = build_from_spec(spec)  # every tensor it allocates is one the file holds: bounded by the file's size
    with safe_open(str(path), framework="pt") as handle:
        built.load_state_dict({key: handle.get_tensor(key) for key in handle.keys()})
    return built.eval()
