"""The ``bf16`` codec: bfloat16 storage (round to nearest even), exact for bf16-representable values, 2 bytes per
element, validated before decoding; a model stored with it is half the fp32 file."""
import math

import pytest
import torch

from cnncompress import models, storage
from cnncompress.storage.codecs import get_codec

BF16 = get_codec("bf16")


def test_bf16_representable_values_round_trip_exactly():
    values = torch.randn(64, 3, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    special = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), 3.3895313892515355e38, 2.0 ** -126])
    for tensor in (values, special):
        data, meta = BF16.encode(tensor)
        assert len(data) == 2 * tensor.numel() and meta == {"stored": "bfloat16"}
        BF16.check(len(data), meta, tuple(tensor.shape))
        decoded = BF16.decode(data, meta, tuple(tensor.shape), "float32")
        assert decoded.dtype == torch.float32 and torch.equal(decoded, tensor)
    nan = BF16.decode(*BF16.encode(torch.tensor([float("nan")])), (1,), "float32")
    assert math.isnan(nan.item())


def test_other_values_round_to_nearest_within_half_a_bf16_step():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 100
    decoded = BF16.decode(*BF16.encode(x), tuple(x.shape), "float32")
    assert torch.equal(decoded, x.to(torch.bfloat16).float())
    assert ((decoded - x).abs() <= x.abs() * 2.0 ** -8).all()  # 8 significant bits: relative error <= 2^-8


def test_wrong_length_is_refused_before_decoding():
    data, meta = BF16.encode(torch.ones(4, 4))
    with pytest.raises(ValueError, match="expected 32"):
        BF16.check(len(data) - 2, meta, (4, 4))
    with pytest.raises(ValueError, match="stored dtype"):
        BF16.check(len(data), {"stored": "bfloat17"}, (4, 4))


def test_a_model_stored_bf16_is_half_the_fp32_file(tmp_path):
    torch.manual_seed(0)
    model = models.build("vgg_s", 10, 1, 48, 0.125)
    fp32 = storage.save(model, tmp_path / "fp32.ccz").stat().st_size
    half = storage.save(model, tmp_path / "bf16.ccz", float_codec="bf16").stat().st_size
    assert 1.95 < fp32 / half <= 2.0
    loaded = storage.load(tmp_path / "bf16.ccz")
    for name, tensor in model.state_dict().items():
        expected = tensor.to(torch.bfloat16).to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name
