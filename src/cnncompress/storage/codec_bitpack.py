"""Codec ``bitpack``: 1 bit per weight (sign, ``w >= 0`` -> 1) plus an optional fp32 scale per output filter.

Layout: ``ceil(numel / 8)`` bytes of sign bits (row-major, LSB first) followed, when ``scale == "filter"``, by
``shape[0]`` little-endian float32 scales alpha_o = mean |W_o| (Rastegari et al. 2016, BWN: W ~ alpha B).
Decoding gives ``alpha_o * sign(W_o)`` (``scale == "filter"``) or ``sign(W)`` (``scale == "none"``), which is
exactly the tensor a binary layer computes with, so a loaded model predicts what the saved one did.
"""
from __future__ import annotations

import numpy as np
import torch

from cnncompress.storage.codecs import numel, register_codec

SCALES = ("filter", "none")


class BitpackCodec:
    name = "bitpack"

    def encode(self, tensor: torch.Tensor, scale: str = "filter") -> tuple[bytes, dict]:
        if scale not in SCALES:
            raise ValueError(f"bitpack scale must be one of {SCALES}, got {scale!r}")
        values = tensor.detach().cpu().float()
        bits = np.packbits((values.numpy() >= 0).ravel(), bitorder="little").tobytes()
        if scale == "filter" and values.dim() > 0 and values.shape[0] > 0:
            alpha = values.reshape(values.shape[0], -1).abs().mean(1)
            bits += alpha.numpy().astype("<f4").tobytes()
        return bits, {"scale": scale}

    def check(self, length: int, meta: dict, shape) -> None:
        scale = meta.get("scale")
        if scale not in SCALES:
            raise ValueError(f"bad bitpack scale {scale!r}")
        expected = (numel(shape) + 7) // 8
        if scale == "filter" and shape:
            expected += 4 * shape[0]
        if length != expected:
            raise ValueError(f"bit-packed blob has {length} bytes, expected {expected} for shape {list(shape)} "
                             f"(scale {scale})")

    def decode(self, data: bytes, meta: dict, shape, dtype: str) -> torch.Tensor:
        self.check(len(data), meta, shape)
        count = numel(shape)
        nbytes = (count + 7) // 8
        bits = np.unpackbits(np.frombuffer(data[:nbytes], dtype=np.uint8), count=count, bitorder="little")
        signs = torch.from_numpy(bits.astype(np.float32) * 2.0 - 1.0).reshape(shape)
        if meta["scale"] == "filter" and shape:
            alpha = torch.from_numpy(np.frombuffer(data[nbytes:], dtype="<f4").astype(np.float32))
            signs = signs * alpha.reshape((-1,) + (1,) * (len(shape) - 1))
        return signs.to(getattr(torch, dtype)).clone()


CODEC = register_codec(BitpackCodec())
