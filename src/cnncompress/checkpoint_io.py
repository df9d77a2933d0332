"""Checkpoint files written whole or not at all, and the optimiser state as flat tensors (safetensors, no pickle)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file (named by this process) renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_json(path: Path, payload: dict) -> None:
    atomic_write(path, json.dumps(payload, indent=1).encode())


def atomic_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[f"{index}.{key}"] = value
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)
