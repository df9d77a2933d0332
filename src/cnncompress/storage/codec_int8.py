"""``int8`` codec: 8-bit integer values plus a per-channel scale and zero point.

For channel ``c`` (index along ``axis``, default 0 = output channels of a conv/linear weight)::

    symmetric:   s_c = max|w_c| / 127,               z_c = 0,   q = clamp(round(w / s_c), -127, 127)
    asymmetric:  s_c = (max w_c - min w_c) / 255,    z_c = round(-128 - min w_c / s_c),
                 q = clamp(round(w / s_c) + z_c, -128, 127)
    decode:      w' = (q - z_c) * s_c

Blob layout: ``numel`` int8 values (row-major) | ``C`` float32 scales | ``C`` int8 zero points, where
``C = shape[axis]``. A tensor that already lies on the grid (e.g. an ``int8`` method layer's weight) round-trips
up to float rounding of the product. Size: 1 byte per element + 5 bytes per channel, ~4x less than fp32.
"""
from __future__ import annotations

import numpy as np
import torch

from cnncompress.storage.codecs import TORCH_DTYPES, numel, register_codec


def quantize_per_channel(tensor: torch.Tensor, axis: int = 0, symmetric: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(q int8, scale float32 [C], zero_point int8 [C])`` for ``tensor`` along ``axis``."""
    w = tensor.detach().float().movedim(axis, 0).reshape(tensor.shape[axis], -1) if tensor.dim() else \
        tensor.detach().float().reshape(1, 1)
    if symmetric:
        scale = w.abs().amax(1) / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.zeros_like(scale, dtype=torch.int8)
        q = torch.clamp(torch.round(w / scale[:, None]), -127, 127)
    else:
        low, high = w.amin(1).clamp(max=0.0), w.amax(1).clamp(min=0.0)  # the grid always holds 0 exactly
        scale = (high - low) / 255.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-128.0 - low / scale), -128, 127)
        q = torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], -128, 127)
        zero = zero.to(torch.int8)
    if tensor.dim():
        moved = list(tensor.shape)
        moved.insert(0, moved.pop(axis))
        q = q.reshape(moved).movedim(0, axis)
    else:
        q = q.reshape(())
    return q.to(torch.int8).contiguous(), scale.float(), zero


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """``(q - z_c) * s_c`` broadcast along ``axis``."""
    if q.dim() == 0:
        return (q.float() - zero.float()[0]) * scale[0]
    shape = [1] * q.dim()
    shape[axis] = -1
    return (q.float() - zero.float().reshape(shape)) * scale.reshape(shape)


class Int8Codec:
    name = "int8"

    def encode(self, tensor: torch.Tensor, axis: int = 0, symmetric: bool = True, **_) -> tuple[bytes, dict]:
        if not tensor.is_floating_point():
            raise ValueError("int8 codec stores float tensors only")
        axis = int(axis) if tensor.dim() else 0
        q, scale, zero = quantize_per_channel(tensor.cpu(), axis, bool(symmetric))
        data = q.numpy().tobytes() + scale.numpy().astype("<f4").tobytes() + zero.numpy().tobytes()
        return data, {"axis": axis, "symmetric": bool(symmetric)}

    @staticmethod
    def _channels(meta: dict, shape) -> int:
        axis = meta.get("axis", 0)
        if not isinstance(axis, int) or (shape and not 0 <= axis < len(shape)):
            raise ValueError(f"bad axis {axis!r} for shape {list(shape)}")
        return shape[axis] if shape else 1

    def check(self, length: int, meta: dict, shape) -> None:
        expected = numel(shape) + 5 * self._channels(meta, shape)
        if length != expected:
            raise ValueError(f"{length} bytes, expected {expected} for shape {list(shape)}")

    def decode(self, data: bytes, meta: dict, shape, dtype: str) -> torch.Tensor:
        channels, count = self._channels(meta, shape), numel(shape)
        q = torch.from_numpy(np.frombuffer(data, dtype=np.int8, count=count).copy()).reshape(shape)
        scale = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=channels, offset=count).copy())
        zero = torch.from_numpy(np.frombuffer(data, dtype=np.int8, count=channels, offset=count + 4 * channels).copy())
        return dequantize_per_channel(q, scale, zero, meta.get("axis", 0)).to(TORCH_DTYPES[dtype])


INT8 = register_codec(Int8Codec())
