"""Checkpoint files written whole or not at all, and the optimiser state as flat tensors (safetensors, no pickle).

A training checkpoint is ONE file, ``checkpoint.safetensors``: the tensors (model, optimiser, best epoch) and, in
its metadata, the JSON record (epoch, config, history) with a SHA-256 over the record and every tensor's name,
dtype, shape and bytes. It is replaced in one ``os.replace``, so a process killed at any point leaves either the
previous checkpoint or the new one, never weights of one epoch beside the record of another; a flipped byte is
refused on resume. ``checkpoint.json`` beside it is a readable copy of the record (written after it; resume does
not trust it).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnncompress.errors import as_os_error, input_error

RECORD_KEY, DIGEST_KEY = "cnncompress.checkpoint", "cnncompress.sha256"


def file_mode() -> int:
    """The mode a new output file gets (``0o666`` minus the process umask: ``0644`` under the usual ``022``), so
    files written through a private temporary name end up like any other output."""
    try:
        with open("/proc/self/status") as status:  # Linux: read the umask without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temporary(path: Path) -> Path:
    """A new, unique, empty file beside ``path`` (same folder, so the final ``os.replace`` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def _publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def _discard(tmp: Path | None) -> None:
    """Remove a temporary file left by a failed write (already gone after a successful one)."""
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _reraise(error: BaseException, path: Path):
    converted = as_os_error(error, path)
    if converted is error:
        raise error
    raise converted from error


def _atomic(path: Path, write, errors: tuple = (OSError,)) -> None:
    """``write(tmp)`` into a unique temporary file beside ``path``, then renamed over it with the usual output mode;
    a failure removes the temporary file and raises an ``OSError`` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        tmp = _temporary(path)
        write(tmp)
        _publish(tmp, path)
    except errors as error:
        _reraise(error, path)
    finally:
        _discard(tmp)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a unique temporary file beside it renamed over it. A failed write (full
    disk, read-only folder) removes the temporary file and raises an ``OSError`` naming ``path``."""
    _atomic(path, lambda tmp: tmp.write_bytes(data))


def atomic_chunks(path: Path, chunks) -> None:
    """``atomic_write`` of the concatenation of ``chunks`` (bytes), written one after the other (never joined in
    memory)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
    _atomic(path, write)


def atomic_json(path: Path, payload: dict) -> None:
    atomic_write(path, json.dumps(payload, indent=1).encode())


def atomic_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """``safetensors.save_file`` whole or not at all (``atomic_write``'s rules; the file gets the usual output
    mode, not safetensors' 0600). A full disk is an ``OSError`` naming ``path``, not a ``SafetensorError``."""
    _atomic(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                                        metadata=metadata), (OSError, SafetensorError))


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


def checkpoint_digest(record_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the record's text and, in name order, each tensor's name, dtype, shape and raw bytes."""
    digest = hashlib.sha256(record_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"\0{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], record: dict) -> None:
    """Write tensors + record (+ their digest) as one safetensors file, atomically."""
    record_json = json.dumps(record, sort_keys=True)
    metadata = {RECORD_KEY: record_json, DIGEST_KEY: checkpoint_digest(record_json, tensors)}
    atomic_safetensors(path, tensors, metadata)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the record of a checkpoint written by ``write_checkpoint``, verified by its digest.
    A damaged, truncated or altered file is an ``InputError`` naming it."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError, RuntimeError) as error:
        raise input_error(path, f"unreadable checkpoint ({type(error).__name__}: {error})") from error
    record_json, digest = metadata.get(RECORD_KEY), metadata.get(DIGEST_KEY)
    if record_json is None or digest is None:
        raise input_error(path, "not a cnncompress checkpoint (no record or digest in its metadata)")
    if checkpoint_digest(record_json, tensors) != digest:
        raise input_error(path, "checkpoint digest does not match its contents (damaged or altered file)")
    try:
        record = json.loads(record_json)
    except ValueError as error:
        raise input_error(path, f"unreadable checkpoint record: {error}") from error
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) or \
            not isinstance(record.get("history"), list) or not isinstance(record.get("config", {}), dict):
        raise input_error(path, "checkpoint record lacks an integer epoch, a history list or a config mapping")
    return tensors, record
