"""CP / Tucker-2 / TT decompositions: exactness at full rank, approximation, parameter counts, storage, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.errors import InputError
from cnncompress.methods import decompose as D
from cnncompress.methods import decompose_rank as R


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _small_vgg():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()


def _low_rank_conv(rank: int, cout=24, cin=12, k=3, **kw) -> nn.Conv2d:
    """A conv whose weight is exactly CP rank ``rank``: sum_r a_r (x) b_r (x) c_r (x) d_r."""
    g = torch.Generator().manual_seed(1)
    a, b, c, d = (torch.randn(n, rank, generator=g) for n in (cout, cin, k, k))
    conv = nn.Conv2d(cin, cout, k, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("tr,sr,ir,jr->tsij", a, b, c, d))
    return conv


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), ((2, 1), (1, 0), 1)])
def test_tucker_full_rank_is_exact_for_stride_padding_dilation(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding, dilation=dilation)
    layer = D.tucker2_conv(conv, 10, 6)
    x = torch.randn(2, 6, 11, 11)
    assert _rel(layer(x), conv(x)) < 1e-5
    assert [type(m) for m in layer] == [nn.Conv2d] * 3 and layer[1].kernel_size == (3, 3)


def test_cp_recovers_an_exactly_low_rank_kernel_and_merge_is_exact():
    conv = _low_rank_conv(4, stride=2, padding=1)
    layer = D.cp_conv(conv, 4, n_iter_max=200)
    x = torch.randn(2, 12, 9, 9)
    assert _rel(layer(x), conv(x)) < 1e-3
    kinds = [(m.kernel_size, m.groups) for m in layer]
    assert kinds == [((1, 1), 1), ((3, 1), 4), ((1, 3), 4), ((1, 1), 1)]
    merged = D.merge_cp(layer)
    assert len(merged) == 3 and merged[1].kernel_size == (3, 3) and merged[1].groups == 4
    assert torch.allclose(merged(x), layer(x), atol=1e-5)


def test_cp_rank_trades_error_for_parameters():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(2, 16, 8, 8)
    errors = [_rel(D.cp_conv(conv, r, n_iter_max=20)(x), conv(x)) for r in (4, 64)]
    assert errors[1] < errors[0]
    assert D.param_count(D.cp_conv(conv, 8, n_iter_max=2)) == 8 * (16 + 3 + 3 + 32) + 32


def test_tt_full_rank_is_exact_and_low_rank_saves_parameters():
    torch.manual_seed(0)
    linear = nn.Linear(48, 64)
    full = D.tt_linear(linear, 10 ** 6, cores=3)
    x = torch.randn(5, 48)
    assert _rel(full(x), linear(x)) < 1e-5
    assert torch.allclose(full.full_weight(), linear.weight, atol=1e-5)
    small = D.tt_linear(linear, 2, cores=3)
    assert small.ranks == [1, 2, 2, 1]
    assert D.param_count(small) == sum(r0 * m * n * r1 for r0, m, n, r1 in zip(
        small.ranks, small.out_shape, small.in_shape, small.ranks[1:])) + 64
    assert D.param_count(small) < D.param_count(linear) / 10


def test_tt_forward_matches_its_dense_reference_at_low_rank():
    torch.manual_seed(0)
    layer = D.tt_linear(nn.Linear(60, 36), 3, cores=2)
    x = torch.randn(4, 60)
    assert torch.allclose(layer(x), x @ layer.full_weight().T + layer.bias, atol=1e-5)


def test_methods_replace_layers_and_parameter_count_drops_as_claimed():
    model = _small_vgg()
    x = torch.randn(2, 1, 48, 48)
    before = D.param_count(model)
    conv = model.features.conv4
    tucker = methods.apply(model, "tucker", layers=["features.conv4"], rank=0.5)
    r_out, r_in = (conv.out_channels + 1) // 2, (conv.in_channels + 1) // 2
    expected = conv.in_channels * r_in + r_in * r_out * 9 + r_out * conv.out_channels + conv.out_channels
    assert D.param_count(tucker) == before - D.param_count(conv) + expected
    assert isinstance(tucker.features.conv4, nn.Sequential) and isinstance(model.features.conv4, nn.Conv2d)
    full = methods.apply(model, "tucker", layers=["features.conv3", "features.conv4"], rank=1.0)
    assert _rel(full(x), model(x)) < 1e-4
    tt = methods.apply(model, "tt", layers=["classifier.fc7"], rank=4)
    assert isinstance(tt.classifier.fc7, D.TTLinear) and D.param_count(tt) < before - 0.9 * D.param_count(
        model.classifier.fc7)
    cp = methods.apply(model, "cp", layers="features.conv5", rank=8, n_iter_max=5)
    assert D.param_count(cp.features.conv5) == 8 * (64 + 6 + 64) + 64
    fast = deploy.to_inference(cp)
    assert len(fast.features.conv5) == 3 and torch.allclose(fast(x), cp(x), atol=1e-5)


def test_auto_rank_follows_the_energy_criterion():
    matrix = np.diag([3.0, 2.0, 1.0, 0.1])  # energies 9, 4, 1, 0.01 of 14.01
    assert R.energy_rank(matrix, 0.6) == 1 and R.energy_rank(matrix, 0.7) == 2 and R.energy_rank(matrix, 0.99) == 3 and R.energy_rank(matrix, 1.0) == 4
    conv = _low_rank_conv(3, cout=20, cin=10)
    r_out, r_in = R.tucker2_ranks(conv.weight.detach().numpy(), "auto", 0.999999)
    assert r_out <= 3 and r_in <= 3
    assert R.cp_rank(conv.weight.detach().numpy(), "auto", 0.999999) <= 3
    assert R.balanced_factors(1024, 3) == [16, 8, 8] and R.balanced_factors(7, 2) == [7, 1]


def test_storage_round_trip_and_file_shrinks(tmp_path):
    model = _small_vgg()
    x = torch.randn(2, 1, 48, 48)
    compressed = methods.apply(model, "tt", layers=["classifier.fc6", "classifier.fc7"], rank=4)
    compressed = methods.apply(compressed, "tucker", layers=["features.conv3"], rank=0.25)
    compressed = methods.apply(compressed, "cp", layers=["features.conv5"], rank=6, n_iter_max=5)
    storage.save(model, tmp_path / "base.ccz")
    storage.save(compressed, tmp_path / "small.ccz")
    loaded = storage.load(tmp_path / "small.ccz").eval()
    assert torch.allclose(loaded(x), compressed.eval()(x), atol=1e-6)
    assert isinstance(loaded.classifier.fc7, D.TTLinear)
    ratio = (tmp_path / "small.ccz").stat().st_size / (tmp_path / "base.ccz").stat().st_size
    assert ratio < 0.9 * D.param_count(compressed) / D.param_count(model) + 0.1


def test_tt_layer_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from cnncompress.measure import export_onnx
    torch.manual_seed(0)
    layer = nn.Sequential(D.tt_linear(nn.Linear(32, 24), 3, cores=2)).eval()
    path = export_onnx(layer, (3, 32), tmp_path / "tt.onnx", fallback=False)
    x = torch.randn(3, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.allclose(y, layer(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("method,config,message", [
    ("tucker", {"layers": ["features.conv9"]}, "no layer"),
    ("cp", {"layers": ["classifier.fc6"]}, "not a Conv2d"),
    ("tt", {"layers": ["features.conv1"]}, "not a Linear"),
    ("tucker", {"layers": []}, "non-empty"),
    ("tucker", {"layers": ["features.conv3"], "rank": 0}, "rank"),
    ("tucker", {"layers": ["features.conv3"], "rank": 1.5}, "fraction"),
    ("cp", {"layers": ["features.conv3"], "rank": "big"}, "rank"),
    ("cp", {"layers": ["features.conv3"], "rank": [2, 3]}, "single rank"),
    ("tt", {"layers": ["classifier.fc7"], "rank": [2, 3, 4]}, "inner ranks"),
    ("tt", {"layers": ["classifier.fc7"], "energy": 0.0}, "energy"),
])
def test_bad_layer_or_rank_is_a_clean_error(method, config, message):
    with pytest.raises(InputError, match=message):
        methods.apply(_small_vgg(), method, **config)


def test_grouped_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups"):
        D.apply_tucker(model, ["0"], rank=2)


def test_dense_weight_reference_gives_reconstruction_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    assert D.reconstruction_error(conv, D.tucker2_conv(conv, 12, 8)) < 1e-6
    assert 0.05 < D.reconstruction_error(conv, D.tucker2_conv(conv, 4, 4)) < 1.0
    exact = _low_rank_conv(3, cout=12, cin=8)
    cp = D.cp_conv(exact, 3, n_iter_max=200)
    assert D.reconstruction_error(exact, cp) < 1e-3
    assert abs(D.reconstruction_error(exact, D.merge_cp(cp)) - D.reconstruction_error(exact, cp)) < 1e-5
    linear = nn.Linear(16, 16)
    assert D.reconstruction_error(linear, D.tt_linear(linear, 100, cores=2)) < 1e-5


def test_tt_layer_accepts_extra_leading_dims_like_linear():
    torch.manual_seed(0)
    linear = nn.Linear(12, 20)
    layer = D.tt_linear(linear, 100, cores=2)
    x = torch.randn(2, 3, 12)
    assert layer(x).shape == (2, 3, 20) and torch.allclose(layer(x), linear(x), atol=1e-5)
