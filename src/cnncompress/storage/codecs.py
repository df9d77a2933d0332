"""Tensor codecs of the ``.ccz`` format and their registry.

A codec turns one tensor into bytes plus a small JSON ``meta`` dict and back. ``check`` validates a blob's
length against the declared shape *before* anything is decoded or allocated, so a hostile file cannot make
the reader allocate more than the file justifies. Lossy codecs (bitpack, codebook, int8) decode to the
tensor the method's inference computes with. Method modules register their own codecs here.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

MAX_ELEMENTS = 2**31


class Codec(Protocol):
    name: str

    def encode(self, tensor: torch.Tensor, **options) -> tuple[bytes, dict]: ...

    def decode(self, data: bytes, meta: dict, shape: tuple[int, ...], dtype: str) -> torch.Tensor: ...

    def check(self, length: int, meta: dict, shape: tuple[int, ...]) -> None:
        """Raise ValueError if ``length`` bytes with ``meta`` cannot hold a tensor of ``shape``."""


CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    CODECS[codec.name] = codec
    return codec


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r} (known: {', '.join(sorted(CODECS))})")
    return CODECS[name]


def numel(shape) -> int:
    return int(math.prod(shape)) if shape else 1


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
                "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class RawCodec:
    """Stores the tensor's elements as little-endian ``store_dtype`` (exact for the tensor's own dtype)."""

    def __init__(self, name: str, store_dtype: str | None):
        self.name, self.store_dtype = name, store_dtype

    def _stored(self, dtype: str) -> torch.dtype:
        return TORCH_DTYPES[self.store_dtype or dtype]

    def encode(self, tensor: torch.Tensor, **options) -> tuple[bytes, dict]:
        stored = self._stored(dtype_name(tensor.dtype)) if tensor.is_floating_point() else tensor.dtype
        array = tensor.detach().cpu().contiguous().to(stored)
        data = array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b""
        return data, {"stored": dtype_name(stored)}

    def check(self, length: int, meta: dict, shape) -> None:
        stored = TORCH_DTYPES.get(meta.get("stored", ""))
        if stored is None:
            raise ValueError(f"bad stored dtype {meta.get('stored')!r}")
        expected = numel(shape) * torch.empty(0, dtype=stored).element_size()
        if length != expected:
            raise ValueError(f"{length} bytes, expected {expected} for shape {list(shape)}")

    def decode(self, data: bytes, meta: dict, shape, dtype: str) -> torch.Tensor:
        stored = TORCH_DTYPES[meta["stored"]]
        array = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return array.view(stored).reshape(shape).to(TORCH_DTYPES[dtype]).clone()


register_codec(RawCodec("raw", None))
register_codec(RawCodec("fp32", "float32"))
register_codec(RawCodec("fp16", "float16"))
register_codec(RawCodec("bf16", "bfloat16"))
"""``bf16``: float tensors as bfloat16 (1 sign, 8 exponent, 7 mantissa bits: fp32's range, 2 bytes per element),
rounded to nearest, ties to even (``torch.Tensor.to(torch.bfloat16)``); values already representable in bf16
(the ``bf16`` method's weights) round-trip exactly, as do infinities and NaN. Decodes to the recorded dtype."""


def bits_to_bytes(bits: np.ndarray) -> bytes:
    """Pack a 0/1 array MSB-first into bytes (helper for bit-level codecs)."""
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()
