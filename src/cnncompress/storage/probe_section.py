"""Probe images a ``.ccz`` carries so that the model can check itself on the machine it is deployed on.

A model whose deployed numerics depend on the engine or the CPU (int8, bf16, binary, fixed point) is saved with a
few real images of its run and the outputs of its exact form on them (``deploy.probes`` makes them,
``deploy.self_check`` runs them through the deployed engine). This module holds the in-memory ``Probes``, their
compact encoding and the file's optional ``"probes"`` manifest section.

Inputs are uint8 codes per channel c: ``x = low_c + q * step_c`` (float32, the product rounded before the sum),
``q`` in 0..255, ``low_c`` the channel's minimum and ``step_c = (max_c - min_c) / 255`` over the probe images
(``quantize``). The reference outputs are computed on the *decoded* inputs, so what is stored is exactly what the
reference ran on. The codes are zlib-compressed; the reference is float32, little-endian, ``(count, classes)``.

Section (manifest key ``"probes"``; a file without it loads as before)::

    {"count": N, "shape": [C, H, W], "classes": K, "low": [C floats], "step": [C floats], "form": str,
     "source": str, "inputs": {"offset", "length", "crc32"}, "reference": {"offset", "length", "crc32"}}

Its two blobs follow the tensors' in the blob section, which the manifest's ``payload_sha256`` covers (a reader
that predates probes ignores the key and the trailing bytes). ``check`` validates every count, shape, offset and
length against ``MAX_*`` and the file before anything is allocated; ``decode`` inflates at most the declared size.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cnncompress.errors import input_error

MAX_COUNT = 1024
MAX_INPUT_BYTES = 16 << 20
"""Bound on ``count * C * H * W`` (uint8 codes) a file may declare: what reading its probes can allocate."""
MAX_CLASSES = 1 << 20
MAX_REFERENCE_BYTES = 16 << 20
_ATTRIBUTE = "_cnncompress_probes"


@dataclass
class Probes:
    """Probe images (uint8 ``codes`` ``(N, C, H, W)`` with per-channel ``low`` and ``step``) and the ``reference``
    outputs ``(N, K)`` of the model's exact form (``form`` names it) on ``inputs()``; ``source``: where the images
    came from; ``history``: the compression history they were computed for (stale probes are never checked)."""

    codes: torch.Tensor
    low: list[float]
    step: list[float]
    reference: torch.Tensor
    form: str = ""
    source: str = ""
    history: list = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.codes.shape[0])

    def inputs(self) -> torch.Tensor:
        """The probe images as the model takes them (float32 ``(N, C, H, W)``)."""
        return dequantize(self.codes, self.low, self.step)


def quantize(images: torch.Tensor) -> tuple[torch.Tensor, list[float], list[float]]:
    """``(codes uint8, low, step)`` of float ``images`` ``(N, C, H, W)``: per channel, ``low`` = min and ``step`` =
    (max - min) / 255, both float32 values (1.0 for a constant channel); ``q = round((x - low) / step)``."""
    x = images.detach().float().cpu()
    low = x.amin(dim=(0, 2, 3))
    step = (x.amax(dim=(0, 2, 3)) - low) / 255
    step = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.round((x - low.view(1, -1, 1, 1)) / step.view(1, -1, 1, 1)).clamp(0, 255).to(torch.uint8)
    return codes, [float(v) for v in low], [float(v) for v in step]


def dequantize(codes: torch.Tensor, low: list[float], step: list[float]) -> torch.Tensor:
    """``low_c + q * step_c`` in float32 (inverse of ``quantize`` up to its rounding)."""
    shape = (1, len(low), 1, 1)
    scaled = codes.float() * torch.tensor(step, dtype=torch.float32).view(shape)
    return scaled + torch.tensor(low, dtype=torch.float32).view(shape)


def attach(model, probes: Probes | None) -> None:
    """Let ``model`` carry ``probes`` (a plain attribute: not a buffer, so never in the state dict)."""
    object.__setattr__(model, _ATTRIBUTE, probes)


def of(model) -> Probes | None:
    """The probes ``model`` carries, or ``None``; probes computed for another compression history are stale:
    ``None``."""
    probes = getattr(model, "__dict__", {}).get(_ATTRIBUTE)
    if probes is None or not belongs(probes, model):
        return None
    return probes


def belongs(probes: Probes, model) -> bool:
    """Whether ``probes`` were computed for ``model``'s compression history (compared as JSON, as files hold it)."""
    def key(history) -> str:
        return json.dumps(list(history or []), sort_keys=True, default=str)
    return key(probes.history) == key(getattr(model, "compression_history", None))


def encode(probes: Probes, offset: int) -> tuple[dict, list[bytes]]:
    """The manifest section of ``probes`` and its two blobs, which start at ``offset`` of the blob section."""
    codes = probes.codes.detach().cpu().contiguous().to(torch.uint8)
    reference = probes.reference.detach().cpu().float().contiguous()
    if codes.dim() != 4 or reference.dim() != 2 or reference.shape[0] != codes.shape[0]:
        raise ValueError(f"probes: codes {list(codes.shape)} and reference {list(reference.shape)} do not pair")
    inputs = zlib.compress(codes.numpy().tobytes(), 9)
    outputs = reference.numpy().astype("<f4").tobytes()
    entry = {"count": int(codes.shape[0]), "shape": list(codes.shape[1:]), "classes": int(reference.shape[1]),
             "low": list(probes.low), "step": list(probes.step), "form": probes.form, "source": probes.source,
             "inputs": _blob(inputs, offset), "reference": _blob(outputs, offset + len(inputs))}
    return entry, [inputs, outputs]


def _blob(data: bytes, offset: int) -> dict:
    return {"offset": offset, "length": len(data), "crc32": zlib.crc32(data)}


def check(path: Path, entry, blob_bytes: int, spec=None) -> None:
    """Refuse (one-line ``InputError``) a probes section whose counts, shape, offsets or lengths are not
    well-formed, exceed ``MAX_*``, run past the blob section, or do not fit the model ``spec`` describes. Nothing
    is allocated."""
    if not isinstance(entry, dict):
        raise input_error(path, "corrupt probes section (not an object)")
    count, shape, classes = entry.get("count"), entry.get("shape"), entry.get("classes")
    if not (_int(count) and 1 <= count <= MAX_COUNT):
        raise input_error(path, f"probes: count {count!r} is not in 1..{MAX_COUNT}")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_int(d) and 1 <= d <= MAX_INPUT_BYTES
                                                                   for d in shape)):
        raise input_error(path, f"probes: bad image shape {shape!r} (expected [C, H, W])")
    if count * math.prod(shape) > MAX_INPUT_BYTES:
        raise input_error(path, f"probes: {count} images of {shape} exceed {MAX_INPUT_BYTES} bytes")
    if not (_int(classes) and 1 <= classes <= MAX_CLASSES and count * classes * 4 <= MAX_REFERENCE_BYTES):
        raise input_error(path, f"probes: {classes!r} classes for {count} images is out of bounds")
    _check_fits(path, shape, classes, spec)
    for key in ("low", "step"):
        values = entry.get(key)
        if not (isinstance(values, list) and len(values) == shape[0]
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
            raise input_error(path, f"probes: {key} must be {shape[0]} finite numbers")
    if not all(v > 0 for v in entry["step"]):
        raise input_error(path, "probes: every step must be positive")
    for key, exact in (("inputs", None), ("reference", count * classes * 4)):
        blob = entry.get(key)
        if not (isinstance(blob, dict) and all(_int(blob.get(k)) and blob[k] >= 0 for k in ("offset", "length"))
                and _int(blob.get("crc32"))):
            raise input_error(path, f"probes: corrupt {key} entry")
        if blob["offset"] + blob["length"] > blob_bytes or (exact is not None and blob["length"] != exact):
            raise input_error(path, f"probes: {key} bytes {blob['offset']}..{blob['offset'] + blob['length']} do "
                                    f"not fit the file (blob section {blob_bytes} bytes)")


def _check_fits(path: Path, shape: list, classes: int, spec) -> None:
    spec = spec if isinstance(spec, dict) else {}
    size, channels, labels = spec.get("input_size"), spec.get("in_channels"), spec.get("num_classes")
    if _int(size) and _int(channels) and shape != [channels, size, size]:
        raise input_error(path, f"probes: images of {shape} do not fit the model's input "
                                f"[{channels}, {size}, {size}]")
    if _int(labels) and classes != labels:
        raise input_error(path, f"probes: {classes} reference classes, the model has {labels}")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(path: Path, entry: dict, read: Callable[[int, int], bytes], history: list) -> Probes:
    """The ``Probes`` of a section ``check`` passed; ``read(offset, length)`` reads the blob section."""
    blobs = {}
    for key in ("inputs", "reference"):
        blob = entry[key]
        blobs[key] = read(blob["offset"], blob["length"])
        if zlib.crc32(blobs[key]) != blob["crc32"]:
            raise input_error(path, f"probes: {key} checksum mismatch (corrupted file)")
    shape = (entry["count"], *entry["shape"])
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(blobs["inputs"], math.prod(shape))
    except zlib.error as error:
        raise input_error(path, f"probes: inputs are not zlib data ({error})") from error
    if len(raw) != math.prod(shape) or inflater.unconsumed_tail or not inflater.eof:
        raise input_error(path, f"probes: inputs do not inflate to {list(shape)} uint8 codes")
    codes = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape)
    reference = torch.frombuffer(bytearray(blobs["reference"]), dtype=torch.float32)
    return Probes(codes, [float(v) for v in entry["low"]], [float(v) for v in entry["step"]],
                  reference.reshape(entry["count"], entry["classes"]).clone(), str(entry.get("form", "")),
                  str(entry.get("source", "")), list(history))
