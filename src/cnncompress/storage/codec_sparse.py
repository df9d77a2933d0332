"""``csr``: sparse tensors with relative indices, as Han et al. 2015/2016 (Deep Compression, Fig. 2 / §2).

The tensor is flattened (row-major). Each stored entry carries the *step* from the previous stored position,
``step = pos_i - pos_{i-1}`` (the first position counts from -1), written as ``step - 1`` in ``index_bits``
bits (Han: 8 bits for conv, 5 for fc; 4 in their figure). When a gap is longer than ``2**index_bits`` a
*padding zero* is inserted every ``2**index_bits`` positions, exactly as in the paper, so no step overflows.

Values: float tensors keep ``fp32`` (or ``fp16``) values; integer tensors (e.g. k-means cluster indices,
0 = pruned) are bit-packed with ``value_bits`` bits each. Round trip is exact (``-0.0`` reads back as ``0.0``).

Blob layout: ``[steps, index_bits each, packed MSB-first, byte aligned][values]``; meta ``{"entries",
"index_bits", "values": "fp32"|"fp16"|"int", "value_bits"}``.

``pack_bits``/``unpack_bits`` (fixed-width unsigned fields, MSB first) are shared with ``codec_codebook``.
"""
from __future__ import annotations

import numpy as np
import torch

from cnncompress.storage.codecs import TORCH_DTYPES, numel, register_codec

FLOAT_VALUES = {"fp32": (np.float32, 4), "fp16": (np.float16, 2)}


def packed_length(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers ``< 2**bits`` into ``bits``-wide fields, MSB first, byte-aligned at the end."""
    values = np.asarray(values, dtype=np.uint64).ravel()
    if values.size == 0:
        return b""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits={bits} must be in 1..32")
    if int(values.max()) >> bits:
        raise ValueError(f"value {int(values.max())} does not fit in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    matrix = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(matrix.ravel()).tobytes()


def unpack_bits(data: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` unsigned integers of ``bits`` bits (int64)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if len(data) < packed_length(count, bits):
        raise ValueError(f"{len(data)} bytes cannot hold {count} values of {bits} bits")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
    weights = (np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return flat.astype(np.int64) @ weights


def relative_steps(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Han's relative indexing: (steps incl. padding entries, index into ``positions`` or -1 for padding)."""
    span = 1 << index_bits
    deltas = np.diff(positions, prepend=-1).astype(np.int64)
    fillers = (deltas - 1) // span                       # padding zeros needed before each entry
    per_entry = fillers + 1
    total = int(per_entry.sum())
    steps = np.full(total, span, dtype=np.int64)
    source = np.full(total, -1, dtype=np.int64)
    last = np.cumsum(per_entry) - 1                      # where each real entry lands
    steps[last] = deltas - fillers * span
    source[last] = np.arange(len(positions))
    return steps, source


def positions_from_steps(steps: np.ndarray, size: int) -> np.ndarray:
    positions = np.cumsum(steps) - 1
    if positions.size and positions[-1] >= size:
        raise ValueError(f"relative indices run to position {int(positions[-1])}, past the {size} elements")
    return positions


class CSRCodec:
    name = "csr"

    def encode(self, tensor: torch.Tensor, index_bits: int = 8, values: str | None = None,
               value_bits: int | None = None) -> tuple[bytes, dict]:
        if not 1 <= int(index_bits) <= 16:
            raise ValueError(f"csr index_bits={index_bits} must be in 1..16")
        index_bits = int(index_bits)
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        if tensor.is_floating_point():
            kind = values or "fp32"
            if kind not in FLOAT_VALUES:
                raise ValueError(f"csr values={kind!r} must be fp32 or fp16 for a float tensor")
            array = flat.float().numpy()
        else:
            kind = "int"
            array = flat.to(torch.int64).numpy()
            if array.size and array.min() < 0:
                raise ValueError("csr stores unsigned integer values only")
            top = int(array.max()) if array.size else 0
            value_bits = int(value_bits or max(1, top.bit_length()))
        positions = np.flatnonzero(array)
        steps, source = relative_steps(positions, index_bits)
        stored = np.where(source >= 0, array[positions[np.maximum(source, 0)]] if positions.size else 0, 0)
        head = pack_bits(steps - 1, index_bits)
        if kind == "int":
            tail = pack_bits(stored.astype(np.int64), value_bits)
        else:
            tail = stored.astype(FLOAT_VALUES[kind][0]).tobytes()
        meta = {"entries": int(len(steps)), "index_bits": index_bits, "values": kind}
        if kind == "int":
            meta["value_bits"] = value_bits
        return head + tail, meta

    def _layout(self, meta: dict) -> tuple[int, int, int, str, int]:
        entries, index_bits, kind = meta["entries"], meta["index_bits"], meta["values"]
        if not (isinstance(entries, int) and entries >= 0 and isinstance(index_bits, int) and 1 <= index_bits <= 16):
            raise ValueError(f"bad csr meta {meta}")
        if kind == "int":
            value_bits = meta.get("value_bits")
            if not (isinstance(value_bits, int) and 1 <= value_bits <= 32):
                raise ValueError(f"bad csr value_bits {value_bits!r}")
            tail = packed_length(entries, value_bits)
        elif kind in FLOAT_VALUES:
            value_bits = 0
            tail = entries * FLOAT_VALUES[kind][1]
        else:
            raise ValueError(f"bad csr values kind {kind!r}")
        return entries, index_bits, packed_length(entries, index_bits), kind, value_bits if kind == "int" else tail

    def check(self, length: int, meta: dict, shape) -> None:
        entries, index_bits, head, kind, extra = self._layout(meta)
        tail = packed_length(entries, extra) if kind == "int" else extra
        if length != head + tail:
            raise ValueError(f"{length} bytes, expected {head + tail} for {entries} csr entries")
        if entries > numel(shape):
            raise ValueError(f"{entries} csr entries for only {numel(shape)} elements")

    def decode(self, data: bytes, meta: dict, shape, dtype: str) -> torch.Tensor:
        entries, index_bits, head, kind, extra = self._layout(meta)
        size = numel(shape)
        steps = unpack_bits(memoryview(data)[:head], entries, index_bits) + 1
        positions = positions_from_steps(steps, size)
        if kind == "int":
            stored = unpack_bits(memoryview(data)[head:], entries, extra)
        else:
            stored = np.frombuffer(data, dtype=FLOAT_VALUES[kind][0], count=entries, offset=head).astype(np.float64)
        target = TORCH_DTYPES[dtype]
        out = torch.zeros(size, dtype=target)
        if entries:
            out[torch.from_numpy(positions)] = torch.from_numpy(np.ascontiguousarray(stored)).to(target)
        return out.reshape(shape)


CSR = register_codec(CSRCodec())
