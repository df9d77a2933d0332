"""Mutations of a valid ``.ccz`` for fuzzing the reader (test tooling: the hypothesis test
``test_ccz_fuzz.py`` and the long run ``fuzz/fuzz_ccz.py`` use it).

Each mutation is ``(kind, position, value)``: ``truncate`` at a position, ``flip`` one bit, ``overwrite`` a byte,
``header_length`` (a new manifest length), or a hostile manifest edit (``shape``, ``offset``, ``length``,
``codec``, ``dtype``, ``meta``, ``architecture``, ``spec``). ``load_outcome`` loads the result and returns
``"ok"`` or ``"error"`` (our one-line ``InputError``); anything else propagates and is a bug.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from cnncompress.errors import InputError
from cnncompress.storage.ccz import load
from cnncompress.storage.ccz_header import HEADER, decode_manifest, encode_manifest, header_size, pack_header

KINDS = ("truncate", "flip", "overwrite", "header_length", "shape", "offset", "length", "codec", "dtype", "meta",
         "architecture", "spec")
HOSTILE_INTS = [-1, 0, 1, 3, 2**31, 2**40, 2**63 - 1, -(2**63), 10**30]
HOSTILE_VALUES = HOSTILE_INTS + [None, "x", "float32", "pickle", 1.5, [], {}, [2**40, 2**40], [-1], "__import__"]
HOSTILE_LAYERS = [{"type": "os.system"}, {"type": "Conv2d", "config": {"in_channels": 2**40, "out_channels": 2**40,
                  "kernel_size": 3}}, {"type": "Linear", "config": {"in_features": -5, "out_features": 2}},
                  {"type": "Sequential", "children": {"0": {"type": "eval"}}}, "junk", None]


def _split(data: bytes):
    magic, version, length = HEADER.unpack(data[:HEADER.size])
    start = header_size(version)
    return magic, version, decode_manifest(data[start:start + length], version), data[start + length:]


def _join(magic, version, manifest, blobs) -> bytes:
    """The file with ``manifest`` re-encoded and re-hashed (a hostile writer recomputes the digest)."""
    encoded = encode_manifest(manifest, version)
    return pack_header(encoded, version) + encoded + blobs


def mutate(data: bytes, kind: str, position: int, value: int) -> bytes:
    """One deterministic mutation of a valid file ``data``."""
    position %= max(1, len(data))
    if kind == "truncate":
        return data[:position]
    if kind == "flip":
        out = bytearray(data)
        out[position] ^= 1 << (value % 8)
        return bytes(out)
    if kind == "overwrite":
        out = bytearray(data)
        out[position] = value % 256
        return bytes(out)
    if kind == "header_length":
        return data[:8] + HEADER.pack(b"CCZ\x00", 2, abs(HOSTILE_INTS[value % len(HOSTILE_INTS)]) % 2**64)[8:] + \
            data[HEADER.size:]
    magic, version, manifest, blobs = _split(data)
    tensors = manifest["tensors"]
    entry = tensors[position % len(tensors)]
    hostile = HOSTILE_VALUES[value % len(HOSTILE_VALUES)]
    if kind in ("shape", "offset", "length", "codec", "dtype", "meta"):
        entry[kind] = hostile if kind != "shape" or not isinstance(hostile, int) else [hostile]
    elif kind == "architecture":
        manifest["architecture"] = {["", "features", "classifier", "features.0"][position % 4]:
                                    HOSTILE_LAYERS[value % len(HOSTILE_LAYERS)]}
    elif kind == "spec":
        key = ["name", "width", "num_classes", "input_size", "in_channels"][position % 5]
        manifest["spec"][key] = hostile
    return _join(magic, version, manifest, blobs)


def load_outcome(data: bytes, path: Path) -> str:
    """Write ``data`` to ``path`` and load it: "ok" or "error" (InputError). Checks that a model that loads holds
    no more tensor bytes than the file can justify (64x its size: 1-bit codecs expand 32x into fp32)."""
    path.write_bytes(data)
    try:
        model = load(path)
    except InputError as error:
        message = str(error)
        assert "\n" not in message and str(path) in message, message
        return "error"
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    assert held <= 64 * len(data) + 4096, f"{held} bytes of tensors from a {len(data)}-byte file"
    return "ok"


def flip_outcomes(data: bytes, path: Path, count: int, seed: int = 0) -> dict[str, int]:
    """Flip one random bit of ``data`` ``count`` times; load each: "refused" (InputError), "same" (the same
    outputs as the original on a fixed input) or "different" (a changed model that loaded: what must never be)."""
    import random
    path.write_bytes(data)
    original = load(path)
    spec = original.spec
    x = torch.randn(2, spec["in_channels"], spec["input_size"], spec["input_size"],
                    generator=torch.Generator().manual_seed(seed))
    reference = original(x)
    rng = random.Random(seed)
    outcomes = {"refused": 0, "same": 0, "different": 0}
    for _ in range(count):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        try:
            loaded = load(path)
        except InputError:
            outcomes["refused"] += 1
            continue
        outcomes["same" if torch.equal(loaded(x), reference) else "different"] += 1
    return outcomes
