"""codebook and huffman codecs: exact round trips (random, single-symbol, empty, skewed), corrupted streams."""
import numpy as np
import pytest
import torch

from cnncompress.storage.codec_codebook import (CODEBOOK, HUFFMAN, MAX_CODE_BITS, canonical_codes, code_lengths,
                                                huffman_decode, huffman_encode)


@pytest.mark.parametrize("seed", range(10))
def test_huffman_random_streams(seed):
    rng = np.random.default_rng(seed)
    alphabet = int(rng.integers(1, 300))
    symbols = rng.integers(0, alphabet, int(rng.integers(0, 5000))) ** int(rng.integers(1, 3)) % 65536
    assert np.array_equal(huffman_decode(huffman_encode(symbols), len(symbols)), symbols)


@pytest.mark.parametrize("symbols", [[], [0], [5, 5, 5, 5], [65535], [0, 1], list(range(256))])
def test_huffman_adversarial_streams(symbols):
    symbols = np.array(symbols, dtype=np.int64)
    assert np.array_equal(huffman_decode(huffman_encode(symbols), len(symbols)), symbols)


def test_huffman_lengths_are_limited_and_prefix_free():
    frequencies = {i: 2 ** i for i in range(40)}  # Fibonacci-like skew would need 39-bit codes
    lengths = code_lengths(frequencies)
    assert max(lengths.values()) <= MAX_CODE_BITS
    assert sum(2.0 ** -l for l in lengths.values()) <= 1.0
    codes = canonical_codes(lengths)
    words = [format(codes[s], f"0{lengths[s]}b") for s in lengths]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    stream = np.repeat(np.arange(40), [min(2 ** i, 3000) for i in range(40)])
    assert np.array_equal(huffman_decode(huffman_encode(stream), len(stream)), stream)


def test_huffman_beats_fixed_width_on_skewed_data():
    symbols = np.minimum(np.random.default_rng(0).geometric(0.3, 20000) - 1, 255)
    assert len(huffman_encode(symbols)) < 0.5 * len(symbols)  # < 4 bits/symbol vs 8


def test_corrupted_huffman_stream_raises():
    symbols = np.random.default_rng(2).integers(0, 20, 500)
    data = bytearray(huffman_encode(symbols))
    with pytest.raises(ValueError):
        huffman_decode(bytes(data[:-3]), len(symbols))            # truncated
    with pytest.raises(ValueError):
        huffman_decode(bytes(data), len(symbols) + 1)              # more symbols than bits
    with pytest.raises(ValueError):
        huffman_decode(bytes(data), len(symbols) - 1)              # bits left over
    broken = bytearray(data)
    broken[2] = 0xFF  # first table entry -> symbol 0xFF?? with a bad length byte next
    broken[4] = 200
    with pytest.raises(ValueError):
        huffman_decode(bytes(broken), len(symbols))
    single = bytearray(huffman_encode(np.zeros(8, dtype=np.int64)))  # code "0"; a "1" bit is no code word
    single[-1] = 0xFF
    with pytest.raises(ValueError):
        huffman_decode(bytes(single), 8)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_huffman_codec_tensor_round_trip(sparse, seed):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, 32, (64, 48), generator=g, dtype=torch.uint8)
    indices[torch.rand(64, 48, generator=g) < [0.0, 0.5, 0.95, 1.0][seed]] = 0
    data, meta = HUFFMAN.encode(indices, sparse=sparse, index_bits=5)
    HUFFMAN.check(len(data), meta, (64, 48))
    assert torch.equal(HUFFMAN.decode(data, meta, (64, 48), "uint8"), indices)
    with pytest.raises(ValueError):
        HUFFMAN.decode(data + b"\x00", meta, (64, 48), "uint8")


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_codebook_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    centroids = torch.randn(1 << bits, generator=g)
    weights = centroids[torch.randint(0, 1 << bits, (33, 7), generator=g)]
    data, meta = CODEBOOK.encode(weights, bits=bits)
    CODEBOOK.check(len(data), meta, (33, 7))
    assert torch.equal(CODEBOOK.decode(data, meta, (33, 7), "float32"), weights)
    assert len(data) <= 4 * (1 << bits) + (33 * 7 * bits + 7) // 8
    indices = torch.randint(0, 1 << bits, (5, 11), generator=g, dtype=torch.uint8)
    data, meta = CODEBOOK.encode(indices, bits=bits)
    assert torch.equal(CODEBOOK.decode(data, meta, (5, 11), "uint8"), indices)


def test_codebook_rejects_bad_input():
    with pytest.raises(ValueError):
        CODEBOOK.encode(torch.arange(10.0), bits=3)  # 10 distinct values > 8
    with pytest.raises(ValueError):
        CODEBOOK.encode(torch.tensor([9], dtype=torch.uint8), bits=3)
    data, meta = CODEBOOK.encode(torch.tensor([1.0, 2.0]), bits=1)
    with pytest.raises(ValueError):
        CODEBOOK.check(len(data) + 1, meta, (2,))
    with pytest.raises(ValueError):
        CODEBOOK.check(len(data), {"bits": 99, "k": 2}, (2,))
