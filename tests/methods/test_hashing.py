"""HashedNets method: layers vs a pure reference, gradients, modes, .ccz round trip and real size saving."""
import json

import pytest
import torch
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.errors import InputError
from cnncompress.kernels import hashed as kernel
from cnncompress.methods.hashing import HashedConv2d, HashedLinear, hashed_layers, layer_seed, num_buckets


def reference_virtual(buckets: torch.Tensor, seed: int, shape, bias: bool = False) -> torch.Tensor:
    """V = S @ w with the dense signed assignment matrix S (n x K) from the pure-Python reference maps."""
    n = 1
    for d in shape:
        n *= d
    index, sign = kernel.reference_maps(seed, n, buckets.numel(), bias)
    assignment = torch.zeros(n, buckets.numel(), dtype=buckets.dtype)
    assignment[torch.arange(n), torch.tensor(index)] = torch.tensor(sign, dtype=buckets.dtype)
    return (assignment @ buckets).view(shape)


def small_layers():
    torch.manual_seed(0)
    linear = nn.Linear(13, 7)
    conv = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
    return [(HashedLinear.from_float(linear, 0.25, True, 11), torch.randn(5, 13)),
            (HashedConv2d.from_float(conv, 0.25, True, 12), torch.randn(2, 6, 9, 9))]


@pytest.mark.parametrize("which", [0, 1])
def test_forward_and_gradient_equal_reference(which):
    layer, x = small_layers()[which]
    layer = layer.double().train()
    x = x.double()
    target = torch.randn_like(layer(x))
    (layer(x) * target).sum().backward()
    w = layer.buckets.detach().clone().requires_grad_(True)
    b = layer.bias_buckets.detach().clone().requires_grad_(True)
    weight = reference_virtual(w, layer.seed, layer.weight_shape)
    bias = reference_virtual(b, layer.seed, (layer.num_bias_buckets and layer.weight_shape[0],), bias=True)
    out = layer._op(x, weight, bias)
    assert torch.allclose(out, layer(x))
    (out * target).sum().backward()
    assert torch.allclose(layer.buckets.grad, w.grad) and torch.allclose(layer.bias_buckets.grad, b.grad)
    # and a finite difference on a few buckets
    for k in (0, layer.num_buckets // 2, layer.num_buckets - 1):
        with torch.no_grad():
            layer.buckets[k] += 1e-6
            plus = (layer(x) * target).sum().item()
            layer.buckets[k] -= 2e-6
            minus = (layer(x) * target).sum().item()
            layer.buckets[k] += 1e-6
        assert (plus - minus) / 2e-6 == pytest.approx(layer.buckets.grad[k].item(), rel=1e-5, abs=1e-7)


def test_from_float_init_is_mean_of_signed_weights():
    torch.manual_seed(3)
    linear = nn.Linear(10, 6)
    layer = HashedLinear.from_float(linear, 0.2, True, 5)
    index, sign = kernel.reference_maps(5, 60, layer.num_buckets)
    flat = linear.weight.detach().reshape(-1)
    for k in range(layer.num_buckets):
        members = [sign[e] * flat[e].item() for e in range(60) if index[e] == k]
        assert layer.buckets[k].item() == pytest.approx(sum(members) / max(1, len(members)), abs=1e-6)


@pytest.mark.parametrize("which", [0, 1])
def test_expand_and_on_the_fly_equal(which):
    layer, x = small_layers()[which]
    layer.eval()
    with torch.no_grad():
        expanded = layer(x)
        assert layer.dense_weight is not None and layer.slots is not None
        layer.set_mode("on-the-fly")
        assert layer.slots is None and layer.dense_weight is None
        flying = layer(x)
        assert layer.slots is None and layer.dense_weight is None  # nothing cached
    assert torch.equal(expanded, flying)
    layer.train()  # training works in both modes and gives the same gradient
    layer(x).sum().backward()
    grad = layer.buckets.grad.clone()
    layer.buckets.grad = None
    layer.set_mode("expand")
    layer(x).sum().backward()
    assert torch.allclose(grad, layer.buckets.grad)


def test_expanded_copy_follows_bucket_updates():
    layer, x = small_layers()[0]
    layer.eval()
    with torch.no_grad():
        before = layer(x)
        layer.buckets.mul_(2.0)  # an optimizer step in eval mode must not leave a stale dense copy
        after = layer(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, layer._op(x, layer.virtual_weight(), layer.virtual_bias()))


def vgg(seed=0):
    torch.manual_seed(seed)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.25).eval()


def test_method_hashes_every_layer_and_state_holds_only_buckets():
    base = vgg()
    model = methods.apply(base, "hashed", compression=1 / 8, hash_bias=True)
    layers = hashed_layers(model)
    assert len(layers) == 8
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    for name, tensor in model.state_dict().items():
        assert name.endswith(("buckets", "bias_buckets")), name
    n_base = sum(p.numel() for p in base.parameters())
    n_hashed = sum(p.numel() for p in model.parameters())
    assert n_hashed == pytest.approx(n_base / 8, rel=0.01)
    fc6 = model.classifier.fc6
    assert fc6.num_buckets == num_buckets(fc6.in_features * fc6.out_features, 1 / 8)
    assert fc6.seed == layer_seed(0, "classifier.fc6") != model.classifier.fc7.seed


def test_layers_option_and_plain_bias():
    model = methods.apply(vgg(), "hashed", layers=["fc6", "features.conv2"], hash_bias=False, compression=0.5)
    names = [n for n, m in model.named_modules() if isinstance(m, (HashedLinear, HashedConv2d))]
    assert names == ["features.conv2", "classifier.fc6"]
    assert model.classifier.fc6.bias_buckets is None
    assert torch.equal(model.classifier.fc6.bias, vgg().classifier.fc6.bias)


@pytest.mark.parametrize("config", [{"compression": 0}, {"compression": 1.5}, {"layers": ["fc99"]},
                                    {"mode": "lazy"}, {"init": "zeros"}, {"seed": -1}, {"colour": 1}])
def test_bad_options_are_clean_errors(config):
    with pytest.raises(InputError):
        methods.apply(vgg(), "hashed", **config)


def test_ccz_round_trip_and_size(tmp_path):
    base = vgg()
    model = methods.apply(base, "hashed", compression=1 / 8)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        expected = model(x)
    full = storage.save(base, tmp_path / "float.ccz")
    small = storage.save(model, tmp_path / "hashed.ccz")
    ratio = small.stat().st_size / full.stat().st_size
    assert ratio <= 0.15, ratio
    loaded = storage.load(small)
    assert [m.seed for m in hashed_layers(loaded)] == [m.seed for m in hashed_layers(model)]
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
        fast = deploy.to_inference(loaded)
        assert torch.equal(fast(x), expected)
    half = storage.load(storage.save(model, tmp_path / "half.ccz", float_codec="fp16"))
    with torch.no_grad():
        assert torch.allclose(half(x), expected, atol=1e-2, rtol=1e-2)
    assert (tmp_path / "half.ccz").stat().st_size < 0.6 * small.stat().st_size


def test_on_the_fly_mode_survives_the_file(tmp_path):
    model = methods.apply(vgg(), "hashed", mode="on-the-fly")
    loaded = storage.load(storage.save(model, tmp_path / "m.ccz"))
    assert all(m.mode == "on-the-fly" and m.slots is None for m in hashed_layers(loaded))
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _rewrite_manifest(path, edit):
    """Edit the manifest and re-hash it (a hostile writer would): the validation behind the digest must hold."""
    from cnncompress.storage.ccz_header import HEADER, decode_manifest, encode_manifest, header_size, pack_header
    data = path.read_bytes()
    magic, version, length = HEADER.unpack(data[:HEADER.size])
    start = header_size(version)
    manifest = decode_manifest(data[start:start + length], version)
    edit(manifest)
    encoded = encode_manifest(manifest, version)
    path.write_bytes(pack_header(encoded, version) + encoded + data[start + length:])


def test_wrong_bucket_count_is_a_clear_error(tmp_path):
    model = methods.apply(vgg(), "hashed")
    path = storage.save(model, tmp_path / "m.ccz")

    def more_buckets(manifest):
        manifest["architecture"]["classifier.fc8"]["config"]["num_buckets"] += 1
    _rewrite_manifest(path, more_buckets)
    with pytest.raises(InputError, match=r"wrong shape \['classifier.fc8.buckets'\]"):
        storage.load(path)

    def consistent_but_short(manifest):
        for entry in manifest["tensors"]:
            if entry["name"] == "classifier.fc8.buckets":
                entry["shape"] = [entry["shape"][0] + 1]
    _rewrite_manifest(path, consistent_but_short)
    with pytest.raises(InputError, match="classifier.fc8.buckets.*bytes, expected"):
        storage.load(path)


def test_finetune_step_updates_buckets():
    model = methods.apply(vgg(), "hashed").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 1, 48, 48), torch.randint(0, 10, (8,))
    before = model.classifier.fc7.buckets.detach().clone()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(m.buckets.grad is not None and m.buckets.grad.abs().sum() > 0 for m in hashed_layers(model))
    assert not torch.equal(before, model.classifier.fc7.buckets)


def test_to_inference_frees_maps_and_rebuilds_them_when_needed():
    model = deploy.to_inference(methods.apply(vgg(), "hashed"))
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        expected = model(x)
    fc7 = model.classifier.fc7
    assert fc7.slots is None and fc7.dense_weight is not None
    with torch.no_grad():
        fc7.buckets.mul_(-1.0)  # stale dense copy -> maps rebuilt from the seed, re-expanded
        changed = model(x)
        assert fc7.slots is not None
        fc7.buckets.mul_(-1.0)
        assert torch.equal(model(x), expected)
    assert not torch.equal(changed, expected)


def test_rescale_matches_the_float_weight_norm():
    base = vgg()
    plain = methods.apply(base, "hashed", rescale=False)
    scaled = methods.apply(base, "hashed", rescale=True)
    for name in ("features.conv2", "classifier.fc7"):
        weight = base.get_submodule(name).weight
        norm = scaled.get_submodule(name).virtual_weight().norm().item()
        assert norm == pytest.approx(weight.norm().item(), rel=1e-4)
        assert plain.get_submodule(name).virtual_weight().norm() < 0.6 * weight.norm()
        filled = plain.get_submodule(name).buckets != 0  # (a rare bucket gets no weight at all)
        ratio = (scaled.get_submodule(name).buckets / plain.get_submodule(name).buckets)[filled].detach()
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))
