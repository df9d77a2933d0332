"""fixed-point (Gupta 2015 eq. 1-2, saturation, quantised errors, dynamic radix) and fp16 storage."""
import os

import pytest
import torch
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.errors import InputError
from cnncompress.methods.quantize import (FixedPointLinear, FixedPointQuantizer, RoundNearest, RoundStochastic,
                                          fixed_point, make_rounding, representable)


def test_round_to_nearest_matches_eq1_and_is_deterministic():
    fl = 4
    eps = 2.0 ** -fl
    base = torch.arange(-20, 20, dtype=torch.float32) * eps
    below = fixed_point(base + 0.49 * eps, 8, fl, RoundNearest())
    above = fixed_point(base + 0.51 * eps, 8, fl, RoundNearest())
    assert torch.equal(below, base)
    assert torch.equal(above, base + eps)
    x = torch.randn(1000)
    assert torch.equal(fixed_point(x, 8, fl, RoundNearest()), fixed_point(x, 8, fl, RoundNearest()))
    assert (fixed_point(x, 8, fl, RoundNearest()) - x).abs().max() <= eps / 2


def test_stochastic_rounding_matches_eq2_and_is_unbiased():
    torch.manual_seed(0)
    fl, n = 3, 200_000
    eps = 2.0 ** -fl
    x = torch.full((n,), 0.3)  # floor = 0.25, fraction (0.3-0.25)/eps = 0.4
    rounded = fixed_point(x, 4, fl, RoundStochastic())
    assert set(rounded.unique().tolist()) == {0.25, 0.375}
    up = (rounded == 0.375).float().mean().item()
    sigma = (0.4 * 0.6 / n) ** 0.5
    assert abs(up - 0.4) < 5 * sigma
    assert abs(rounded.mean().item() - 0.3) < 5 * sigma * eps
    # nearest is biased on the same input: always 0.25
    assert torch.all(fixed_point(x, 4, fl, RoundNearest()) == 0.25)
    grid = torch.arange(-8, 8) * eps  # values already on the grid never move
    assert torch.equal(fixed_point(grid, 4, fl, RoundStochastic()), grid)


def test_saturation_at_the_representable_range():
    il, fl = 4, 12
    top = 2.0 ** (il - 1) - 2.0 ** -fl
    x = torch.tensor([100.0, 8.0, 7.9999, -8.0, -100.0, -8.1])
    for rounding in (RoundNearest(), RoundStochastic()):
        out = fixed_point(x, il, fl, rounding)
        assert out.max().item() == top and out.min().item() == -8.0
        assert out[0].item() == top and out[4].item() == -8.0 and out[5].item() == -8.0


def test_unknown_rounding_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown rounding mode 'up'"):
        make_rounding("up")
    model = models.build("vgg_s", 10, 1, 48, 0.25)
    with pytest.raises(InputError, match="rounding"):
        methods.apply(model, "fixed-point", rounding="up")
    with pytest.raises(InputError, match="FL"):
        methods.apply(model, "fixed-point", il=0, fl=16)


def test_backpropagated_error_is_quantised():
    torch.manual_seed(0)
    layer = FixedPointLinear(6, 3, il=4, fl=4, rounding="nearest", activations=False, gradients=True)
    layer.after_step()
    x = torch.randn(5, 6).round()  # on the grid: the input is not what we test here
    g = torch.randn(5, 3) * 0.3
    layer(x).backward(g)
    gq = fixed_point(g, 4, 4, RoundNearest())
    assert not torch.equal(gq, g)
    assert torch.allclose(layer.weight.grad, gq.t() @ x)
    assert torch.allclose(layer.bias.grad, gq.sum(0))


def test_weights_stay_representable_and_small_updates_vanish_only_with_nearest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    model.spec = None
    x, target = torch.randn(16, 8), torch.randn(16, 4)
    changed = {}
    for rounding in ("nearest", "stochastic"):
        fixed = methods.registry.METHODS["fixed-point"].apply_fn(
            __import__("copy").deepcopy(model), il=4, fl=6, rounding=rounding)
        layer = fixed[0]
        assert representable(layer.weight.detach(), 4, 6)
        before = layer.weight.detach().clone()
        optimizer = torch.optim.SGD(fixed.parameters(), lr=1e-3)  # updates < eps/2 = 2^-7
        for _ in range(10):
            optimizer.zero_grad()
            nn.functional.mse_loss(fixed(x), target).backward()
            assert (layer.weight.grad * 1e-3).abs().max() < 2.0 ** -7
            optimizer.step()
            layer.after_step()
        assert representable(layer.weight.detach(), 4, 6)
        changed[rounding] = (layer.weight.detach() != before).sum().item()
    assert changed["nearest"] == 0 and changed["stochastic"] > 0


def test_dynamic_fixed_point_moves_the_radix_point():
    quantizer = FixedPointQuantizer(il=2, fl=14, rounding="nearest", dynamic=True, update_every=1)
    quantizer.train()
    big = torch.full((100,), 20.0)
    for _ in range(5):
        quantizer(big)
    assert int(quantizer.il.item()) >= 6  # 20 needs IL = 6 (range [-32, 32))
    assert quantizer(big).max().item() == 20.0
    small = torch.full((100,), 0.01)
    for _ in range(10):
        quantizer(small)
    assert int(quantizer.il.item()) == 1


def test_fixed_point_model_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = models.build("vgg_s", 10, 1, 48, 0.25)
    fixed = methods.apply(model, "fixed-point", il=6, fl=10, rounding="stochastic", dynamic=True)
    fixed.train()
    x, y = torch.randn(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(fixed(x), y).backward()
    assert fixed.features.conv1.weight.grad is not None
    fixed.eval()
    storage.save(fixed, tmp_path / "fixed.ccz")
    loaded = storage.load(tmp_path / "fixed.ccz")
    assert type(loaded.features.conv1) is type(fixed.features.conv1)
    assert loaded.features.conv1.weight_quant.dynamic
    assert torch.equal(loaded(x), fixed(x))
    from cnncompress.deploy.onnx_export import export_proto as export_onnx  # eval-mode fixed point is plain ops: exportable
    import onnxruntime
    session = onnxruntime.InferenceSession(export_onnx(fixed, x[:1]).SerializeToString())
    assert torch.allclose(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), fixed(x), atol=1e-4)


def test_fp16_round_trip_halves_the_file(tmp_path):
    torch.manual_seed(0)
    model = models.build("vgg_s", 10, 1, 48, 0.25).eval()
    half = methods.apply(model, "fp16").eval()
    x = torch.randn(3, 1, 48, 48)
    assert torch.equal(half.classifier.fc6.weight, model.classifier.fc6.weight.half().float())
    assert torch.allclose(half(x), model(x), atol=1e-2, rtol=1e-2)
    storage.save(model, tmp_path / "fp32.ccz")
    storage.save(half, tmp_path / "fp16.ccz")
    loaded = storage.load(tmp_path / "fp16.ccz")
    assert torch.equal(loaded(x), half(x))
    ratio = os.path.getsize(tmp_path / "fp32.ccz") / os.path.getsize(tmp_path / "fp16.ccz")
    assert 1.9 < ratio <= 2.0
    compute16 = methods.apply(model, "fp16", compute="fp16").eval()
    assert torch.allclose(compute16(x), half(x), atol=5e-2, rtol=5e-2)


def test_fp16_after_another_method_halves_its_floats_too(tmp_path):
    """hashed -> fp16: the hashed buckets (not Conv2d/Linear weights) are stored as fp16 as well."""
    from cnncompress import methods, models, storage
    base = models.build("vgg_s", 10, 1, 48, width=0.25)
    hashed = methods.apply(base, "hashed")
    both = methods.apply(hashed, "fp16")
    a = storage.payload_bytes(storage.save(hashed, tmp_path / "h.ccz"))
    b = storage.payload_bytes(storage.save(both, tmp_path / "hf.ccz"))
    assert b < 0.55 * a
    loaded = storage.load(tmp_path / "hf.ccz")
    x = torch.randn(2, 1, 48, 48)
    assert torch.allclose(deploy.to_inference(loaded)(x), deploy.to_inference(both.eval())(x), atol=1e-5)
