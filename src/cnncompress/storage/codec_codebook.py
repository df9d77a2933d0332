"""``codebook`` and ``huffman`` codecs (Deep Compression, Han et al. 2016, §3-§4).

``codebook`` (weight sharing storage): a float tensor with at most ``2**bits`` distinct values is stored as
its fp32 centroids plus one ``bits``-wide index per element; an unsigned integer tensor (cluster indices kept
by a shared layer, whose centroids are a tensor of their own) is stored as the packed ``bits``-wide indices
alone. Lossless in both cases.

``huffman``: canonical Huffman coding (lengths limited to ``MAX_CODE_BITS``) of an unsigned integer tensor.
``sparse=True`` codes the two streams of Han's relative-index CSR (``codec_sparse``): the index steps and the
values (padding zeros included), each with its own code; ``sparse=False`` codes the flat value stream.
Blob of one coded stream: ``u16 n_symbols | n x (u16 symbol, u8 length) | u32 n_bits | bit stream``.
Decoding checks every code word and the exact bit count, so a corrupted stream raises ValueError.
"""
from __future__ import annotations

import heapq
import struct

import numpy as np
import torch

from cnncompress.storage.codec_sparse import pack_bits, packed_length, positions_from_steps, relative_steps, unpack_bits
from cnncompress.storage.codecs import TORCH_DTYPES, numel, register_codec

MAX_CODE_BITS = 20
HEAD = struct.Struct("<H")
SYMBOL = struct.Struct("<HB")
NBITS = struct.Struct("<I")


class CodebookCodec:
    name = "codebook"

    def encode(self, tensor: torch.Tensor, bits: int = 8) -> tuple[bytes, dict]:
        bits = int(bits)
        if not 1 <= bits <= 16:
            raise ValueError(f"codebook bits={bits} must be in 1..16")
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        if tensor.is_floating_point():
            centroids, indices = np.unique(flat.float().numpy(), return_inverse=True)
            if len(centroids) > 1 << bits:
                raise ValueError(f"{len(centroids)} distinct values do not fit a {bits}-bit codebook")
            return centroids.astype(np.float32).tobytes() + pack_bits(indices, bits), {"bits": bits,
                                                                                      "k": len(centroids)}
        values = flat.to(torch.int64).numpy()
        if values.size and (values.min() < 0 or values.max() >> bits):
            raise ValueError(f"integer values must lie in [0, 2**{bits}) for a {bits}-bit codebook")
        return pack_bits(values, bits), {"bits": bits, "k": 0}

    def _layout(self, meta: dict) -> tuple[int, int]:
        bits, k = meta["bits"], meta["k"]
        if not (isinstance(bits, int) and 1 <= bits <= 16 and isinstance(k, int) and 0 <= k <= 1 << bits):
            raise ValueError(f"bad codebook meta {meta}")
        return bits, k

    def check(self, length: int, meta: dict, shape) -> None:
        bits, k = self._layout(meta)
        expected = 4 * k + packed_length(numel(shape), bits)
        if length != expected:
            raise ValueError(f"{length} bytes, expected {expected} for shape {list(shape)}")

    def decode(self, data: bytes, meta: dict, shape, dtype: str) -> torch.Tensor:
        bits, k = self._layout(meta)
        indices = unpack_bits(memoryview(data)[4 * k:], numel(shape), bits)
        if k:
            if indices.size and indices.max() >= k:
                raise ValueError(f"codebook index {int(indices.max())} >= {k} centroids")
            values = np.frombuffer(data, dtype=np.float32, count=k)[indices] if indices.size else indices
            return torch.from_numpy(np.ascontiguousarray(values)).to(TORCH_DTYPES[dtype]).reshape(shape)
        return torch.from_numpy(indices).to(TORCH_DTYPES[dtype]).reshape(shape)


# ----------------------------------------------------------------------------------------------------- Huffman

def code_lengths(frequencies: dict[int, int], limit: int = MAX_CODE_BITS) -> dict[int, int]:
    """Huffman code length per symbol (a lone symbol gets length 1). Lengths above ``limit`` are avoided by
    flattening the frequencies (``f -> f//2 + 1``) and rebuilding, which keeps the code optimal-ish."""
    if not frequencies:
        return {}
    if len(frequencies) == 1:
        return {next(iter(frequencies)): 1}
    freq = dict(frequencies)
    while True:
        heap = [(f, i, (s,)) for i, (s, f) in enumerate(sorted(freq.items()))]
        heapq.heapify(heap)
        depth = dict.fromkeys(freq, 0)
        tie = len(heap)
        while len(heap) > 1:
            fa, _, a = heapq.heappop(heap)
            fb, _, b = heapq.heappop(heap)
            for symbol in a + b:
                depth[symbol] += 1
            heapq.heappush(heap, (fa + fb, tie, a + b))
            tie += 1
        if max(depth.values()) <= limit:
            return depth
        freq = {s: f // 2 + 1 for s, f in freq.items()}


def canonical_codes(lengths: dict[int, int]) -> dict[int, int]:
    """Canonical code words: symbols sorted by (length, symbol), codes counted upwards (DEFLATE style)."""
    codes, code, previous = {}, 0, 0
    for symbol, length in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol] = code
        code += 1
        previous = length
    return codes


def huffman_encode(symbols: np.ndarray) -> bytes:
    """Canonical-Huffman code an array of unsigned integers (< 65536) into a self-describing blob."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() > 0xFFFF):
        raise ValueError("huffman symbols must lie in 0..65535")
    values, counts = np.unique(symbols, return_counts=True)
    lengths = code_lengths(dict(zip(values.tolist(), counts.tolist())))
    codes = canonical_codes(lengths)
    table = b"".join(SYMBOL.pack(s, lengths[s]) for s in sorted(lengths))
    if not symbols.size:
        return HEAD.pack(0) + NBITS.pack(0)
    code_of = np.zeros(int(values.max()) + 1, dtype=np.int64)
    length_of = np.zeros(int(values.max()) + 1, dtype=np.int64)
    for s in lengths:
        code_of[s], length_of[s] = codes[s], lengths[s]
    lens = length_of[symbols]
    total = int(lens.sum())
    owner = np.repeat(np.arange(symbols.size), lens)
    offset = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    bits = (code_of[symbols][owner] >> (lens[owner] - 1 - offset)) & 1
    return HEAD.pack(len(lengths)) + table + NBITS.pack(total) + np.packbits(bits.astype(np.uint8)).tobytes()


def _read_header(data: memoryview) -> tuple[dict[int, int], int, int]:
    if len(data) < HEAD.size:
        raise ValueError("huffman stream truncated (no header)")
    (n,) = HEAD.unpack_from(data, 0)
    start = HEAD.size + n * SYMBOL.size
    if len(data) < start + NBITS.size:
        raise ValueError("huffman stream truncated (code table)")
    lengths = {}
    for i in range(n):
        symbol, length = SYMBOL.unpack_from(data, HEAD.size + i * SYMBOL.size)
        if not 1 <= length <= MAX_CODE_BITS or symbol in lengths:
            raise ValueError(f"corrupt huffman code table (symbol {symbol}, length {length})")
        lengths[symbol] = length
    if lengths and sum(2.0 ** -l for l in lengths.values()) > 1.0 + 1e-12:
        raise ValueError("corrupt huffman code table (lengths violate Kraft's inequality)")
    (n_bits,) = NBITS.unpack_from(data, start)
    return lengths, n_bits, start + NBITS.size


def huffman_size(data: memoryview) -> int:
    """Total bytes of the coded stream starting at ``data`` (header + table + bits)."""
    _, n_bits, start = _read_header(data)
    return start + (n_bits + 7) // 8


def huffman_decode(data: bytes | memoryview, count: int) -> np.ndarray:
    """Decode ``count`` symbols; raises ValueError on any inconsistency (bad code word, wrong bit count)."""
    data = memoryview(data)
    lengths, n_bits, start = _read_header(data)
    if len(data) < start + (n_bits + 7) // 8:
        raise ValueError("huffman stream truncated (bit stream)")
    if count == 0:
        if n_bits:
            raise ValueError("huffman stream has bits but no symbols")
        return np.zeros(0, dtype=np.int64)
    if not lengths or n_bits < count or n_bits > count * MAX_CODE_BITS:
        raise ValueError(f"huffman stream of {n_bits} bits cannot hold {count} symbols")
    width = max(lengths.values())
    table_symbol = np.full(1 << width, -1, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    for symbol, code in canonical_codes(lengths).items():
        span = width - lengths[symbol]
        table_symbol[code << span:(code + 1) << span] = symbol
        table_length[code << span:(code + 1) << span] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(data[start:], dtype=np.uint8), count=n_bits).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    window = np.zeros(n_bits, dtype=np.int64)
    for j in range(width):                       # the next `width` bits seen from every bit position
        window = (window << 1) | bits[j:j + n_bits]
    symbol_at, length_at = table_symbol[window].tolist(), table_length[window].tolist()
    out, position = [], 0
    for _ in range(count):
        if position >= n_bits or symbol_at[position] < 0:
            raise ValueError(f"corrupt huffman stream at bit {position}")
        out.append(symbol_at[position])
        position += length_at[position]
    if position != n_bits:
        raise ValueError(f"corrupt huffman stream: decoded {position} of {n_bits} bits")
    return np.asarray(out, dtype=np.int64)


class HuffmanCodec:
    """Unsigned integer tensors; ``sparse=True``: Han's relative-index CSR streams, each Huffman coded."""

    name = "huffman"

    def encode(self, tensor: torch.Tensor, sparse: bool = True, index_bits: int = 8) -> tuple[bytes, dict]:
        if tensor.is_floating_point():
            raise ValueError("huffman codes integer tensors (cluster indices); use codebook first")
        values = tensor.detach().cpu().contiguous().reshape(-1).to(torch.int64).numpy()
        if not sparse:
            return huffman_encode(values), {"sparse": False}
        if not 1 <= int(index_bits) <= 16:
            raise ValueError(f"huffman index_bits={index_bits} must be in 1..16")
        positions = np.flatnonzero(values)
        steps, source = relative_steps(positions, int(index_bits))
        stored = np.where(source >= 0, values[positions[np.maximum(source, 0)]] if positions.size else 0, 0)
        meta = {"sparse": True, "entries": int(len(steps)), "index_bits": int(index_bits)}
        return huffman_encode(steps - 1) + huffman_encode(stored), meta

    def check(self, length: int, meta: dict, shape) -> None:
        if not isinstance(meta.get("sparse"), bool):
            raise ValueError(f"bad huffman meta {meta}")
        if meta["sparse"]:
            entries = meta.get("entries")
            if not (isinstance(entries, int) and 0 <= entries <= numel(shape)):
                raise ValueError(f"bad huffman entry count {entries!r}")
        minimum = 2 * (HEAD.size + NBITS.size) if meta["sparse"] else HEAD.size + NBITS.size
        if length < minimum:
            raise ValueError(f"{length} bytes is shorter than a huffman header")

    def decode(self, data: bytes, meta: dict, shape, dtype: str) -> torch.Tensor:
        view, size = memoryview(data), numel(shape)
        if not meta["sparse"]:
            if huffman_size(view) != len(data):
                raise ValueError("huffman stream length does not match the blob")
            flat = huffman_decode(view, size)
        else:
            entries = meta["entries"]
            first = huffman_size(view)
            if first + huffman_size(view[first:]) != len(data):
                raise ValueError("huffman streams do not fill the blob exactly")
            steps = huffman_decode(view[:first], entries) + 1
            stored = huffman_decode(view[first:], entries)
            if steps.size and steps.max() > 1 << meta["index_bits"]:
                raise ValueError("huffman index step exceeds index_bits")
            flat = np.zeros(size, dtype=np.int64)
            flat[positions_from_steps(steps, size)] = stored
        return torch.from_numpy(flat).to(TORCH_DTYPES[dtype]).reshape(shape)


CODEBOOK = register_codec(CodebookCodec())
HUFFMAN = register_codec(HuffmanCodec())
