"""csr codec: exact round trips on random sparse tensors (float and integer), padding zeros, hostile metadata."""
import numpy as np
import pytest
import torch

from cnncompress.storage.codec_sparse import CSR, pack_bits, relative_steps, unpack_bits


def random_sparse(seed: int, shape, density: float, dtype=torch.float32, top: int = 31) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        values = torch.randn(shape, generator=g).to(dtype)
    else:
        values = torch.randint(1, top + 1, shape, generator=g).to(dtype)
    return torch.where(torch.rand(shape, generator=g) < density, values, torch.zeros((), dtype=dtype))


@pytest.mark.parametrize("seed", range(12))
def test_float_round_trip_is_exact(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 40, size=rng.integers(1, 5)))
    density = float(rng.choice([0.0, 0.01, 0.05, 0.3, 0.9, 1.0]))
    index_bits = int(rng.choice([1, 3, 4, 5, 8, 12]))
    tensor = random_sparse(seed, shape, density)
    data, meta = CSR.encode(tensor, index_bits=index_bits)
    CSR.check(len(data), meta, shape)
    assert torch.equal(CSR.decode(data, meta, shape, "float32"), tensor)


@pytest.mark.parametrize("seed", range(8))
def test_integer_round_trip_is_exact(seed):
    tensor = random_sparse(seed, (17, 9, 3), [0.02, 0.4][seed % 2], torch.uint8, top=(1 << (seed % 8 + 1)) - 1)
    data, meta = CSR.encode(tensor, index_bits=4, value_bits=seed % 8 + 1)
    CSR.check(len(data), meta, tensor.shape)
    assert torch.equal(CSR.decode(data, meta, tuple(tensor.shape), "uint8"), tensor)


def test_padding_zeros_follow_han():
    """A gap longer than 2**bits positions needs padding entries (Han et al. Fig. 2: 4-bit, gap 8 -> none;
    our steps count positions, so a step of 20 with 3 bits (max 8) needs two fillers)."""
    steps, source = relative_steps(np.array([3, 23]), 3)
    assert steps.tolist() == [4, 8, 8, 4] and source.tolist() == [0, -1, -1, 1]
    tensor = torch.zeros(30)
    tensor[3], tensor[23] = 1.5, -2.0
    data, meta = CSR.encode(tensor, index_bits=3)
    assert meta["entries"] == 4
    assert torch.equal(CSR.decode(data, meta, (30,), "float32"), tensor)


def test_sparse_is_smaller_and_fp16_values():
    tensor = random_sparse(0, (256, 256), 0.05)
    data, meta = CSR.encode(tensor, index_bits=5)
    assert len(data) < 0.1 * tensor.numel() * 4
    half, meta16 = CSR.encode(tensor, index_bits=5, values="fp16")
    assert torch.equal(CSR.decode(half, meta16, (256, 256), "float32"), tensor.half().float())


def test_bitpack_helpers_round_trip():
    values = np.random.default_rng(1).integers(0, 1 << 11, 1001)
    assert np.array_equal(unpack_bits(pack_bits(values, 11), 1001, 11), values)
    with pytest.raises(ValueError):
        pack_bits(np.array([8]), 3)


def test_hostile_metadata_is_rejected():
    tensor = random_sparse(3, (10, 10), 0.3)
    data, meta = CSR.encode(tensor, index_bits=4)
    with pytest.raises(ValueError):
        CSR.check(len(data) - 1, meta, (10, 10))
    with pytest.raises(ValueError):
        CSR.check(len(data), {**meta, "entries": 10**9}, (10, 10))
    with pytest.raises(ValueError):
        CSR.check(len(data), {**meta, "values": "pickle"}, (10, 10))
    ones = torch.ones(10)
    data, meta = CSR.encode(ones, index_bits=4)
    with pytest.raises(ValueError):  # all steps say 16: positions run past the tensor
        CSR.decode(b"\xff" * len(data[:5]) + data[5:], meta, (10,), "float32")
    with pytest.raises(ValueError):
        CSR.encode(ones, index_bits=0)
