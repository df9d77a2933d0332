"""Binarization methods: layers, STE, clipping, stochastic sign, reorder, fast path == reference, .ccz, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.errors import InputError
from cnncompress.kernels import bitpack
from cnncompress.methods import binarize as B
from cnncompress.storage import ccz
from cnncompress.storage.codec_bitpack import CODEC


def _vgg(width: float = 0.125):
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=width).eval()


def _calibrated(model: nn.Module) -> nn.Module:
    """Give inserted BatchNorms well-spread statistics and biases (as after fine-tuning), so no sign sits on 0."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=g) * 0.05)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name,binary_input", [("binaryconnect", False), ("bwn", False), ("xnor", True),
                                               ("binact", True)])
def test_layers_replaced_first_last_kept(name, binary_input):
    net = methods.apply(_vgg(), name)
    assert type(net.features.conv1) is nn.Conv2d and type(net.classifier.fc8) is nn.Linear
    for path in ("features.conv2", "features.conv5", "classifier.fc6", "classifier.fc7"):
        layer = net.get_submodule(path)
        if binary_input:  # reorder: BN -> binary activation -> conv
            assert isinstance(layer, nn.Sequential) and isinstance(layer.bn, nn.modules.batchnorm._BatchNorm)
            layer = layer.binary
        assert isinstance(layer, (B.BinaryConv2d, B.BinaryLinear)) and layer.binary_input == binary_input
    out = net.train()(torch.randn(3, 1, 48, 48))
    out.sum().backward()
    assert out.shape == (3, 10)


def test_bwn_forward_uses_alpha_times_sign():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = B.BinaryConv2d.from_float(conv)
    alpha = layer.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(layer.binary_weight(), alpha * bitpack.sign(layer.weight))
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), nn.functional.conv2d(x, alpha * bitpack.sign(layer.weight), layer.bias,
                                                              padding=1))


def test_ste_gradient_clipped_and_shadow_weights_clipped():
    layer = B.BinaryLinear(5, 3, binary_input=True, input_scale=False)
    x = torch.tensor([[0.5, -2.0, 0.0, 1.5, -0.3]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad[0, 1] == 0 and x.grad[0, 3] == 0 and x.grad[0, 0] != 0  # 1{|x| <= 1}
    with torch.no_grad():
        layer.weight.mul_(100)
    layer.after_step()
    assert layer.weight.abs().max() <= 1.0


def test_trainer_clips_shadow_weights():
    from cnncompress.layers import after_step as _after_step
    net = methods.apply(_vgg(0.125), "bwn")
    with torch.no_grad():
        net.classifier.fc6.weight.fill_(3.0)
    _after_step(net)
    assert net.classifier.fc6.weight.max() == 1.0


def test_stochastic_sign_probability():
    torch.manual_seed(0)
    layer = B.BinaryLinear(4000, 2, scale="layer", stochastic=True)
    with torch.no_grad():
        layer.scale_h.fill_(1.0)
        layer.weight[0].fill_(0.5)   # hard_sigmoid(0.5) = 0.75 -> mean +0.5
        layer.weight[1].fill_(-2.0)  # probability 0 -> always -1
    layer.train()
    sample = layer.binary_weight()
    assert abs(sample[0].mean().item() - 0.5) < 0.06 and torch.all(sample[1] == -1)
    assert not torch.equal(sample, layer.binary_weight())  # resampled every forward
    layer.eval()
    assert torch.equal(layer.binary_weight(), layer.binary_weight())  # deterministic at test time


def test_xnor_fast_path_equals_reference():
    net = _calibrated(methods.apply(_vgg(), "xnor"))
    fast = deploy.to_inference(copy.deepcopy(net))
    assert isinstance(fast.features.conv3.binary, B.XnorConv2d)
    assert isinstance(fast.classifier.fc6.binary, B.XnorLinear)
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-5)


def test_bwn_inference_and_ccz_round_trip(tmp_path):
    net = methods.apply(_vgg(), "bwn")
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        expected = net(x)
        loaded = storage.load(storage.save(net, tmp_path / "bwn.ccz"))
        torch.testing.assert_close(loaded(x), expected)
        fast = deploy.to_inference(loaded)
        assert isinstance(fast.classifier.fc6, B.SignedLinear)
        torch.testing.assert_close(fast(x), expected)
        again = storage.load(storage.save(fast, tmp_path / "fast.ccz"))
        torch.testing.assert_close(again(x), expected)
    sizes = {e["name"]: e["length"] for e in storage.read_manifest(tmp_path / "bwn.ccz")[0]["tensors"]}
    fc6 = net.classifier.fc6.weight
    assert sizes["classifier.fc6.weight"] == fc6.numel() // 8 + 4 * fc6.shape[0]


def test_xnor_ccz_round_trip_training_and_inference_models(tmp_path):
    net = _calibrated(methods.apply(_vgg(), "xnor"))
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        expected = net(x)
        loaded = storage.load(storage.save(net, tmp_path / "xnor.ccz"))
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
        fast = deploy.to_inference(loaded)
        packed = storage.load(storage.save(fast, tmp_path / "xnor-fast.ccz"))
        assert isinstance(packed.features.conv4.binary, B.XnorConv2d)
        torch.testing.assert_close(deploy.to_inference(packed)(x), fast(x))
    assert (tmp_path / "xnor-fast.ccz").stat().st_size < (tmp_path / "xnor.ccz").stat().st_size * 1.1


def test_bitpack_codec_ratio_per_layer_and_full_vgg_s_224():
    weight = torch.randn(512, 4608)
    data, meta = CODEC.encode(weight, scale="filter")
    assert 4 * weight.numel() / len(data) >= 31.0
    decoded = CODEC.decode(data, meta, tuple(weight.shape), "float32")
    alpha = weight.abs().mean(1, keepdim=True)
    torch.testing.assert_close(decoded, alpha * bitpack.sign(weight))
    # full VGG-S (224, RGB, 8 classes) on the meta device: bytes the .ccz payload will hold, from the codec plan
    with torch.device("meta"):
        float_net = models.build("vgg_s", num_classes=8, in_channels=3, input_size=224)
        bwn = methods.apply(float_net, "bwn")

    def payload(model):
        total = 0
        for name, (codec, options) in ccz._codec_plan(model, "fp32").items():
            tensor = model.state_dict()[name]
            total += ((tensor.numel() + 7) // 8 + 4 * tensor.shape[0] if codec == "bitpack"
                      else tensor.numel() * tensor.element_size())
        return total

    assert payload(float_net) / payload(bwn) >= 28.0


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no eligible layers"):
        methods.apply(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), "xnor")
    with pytest.raises(InputError, match="no option"):
        methods.apply(_vgg(0.125), "bwn", alpha="yes")
    with pytest.raises(InputError, match="true or false"):
        methods.apply(_vgg(0.125), "xnor", input_scale="no")
    path = storage.save(methods.apply(_vgg(0.125), "bwn"), tmp_path / "bad.ccz")
    manifest, _ = storage.read_manifest(path)
    raw = path.read_bytes()
    entry = next(e for e in manifest["tensors"] if e["codec"] == "bitpack")
    entry["shape"][1] += 64  # the blob no longer matches the declared shape
    from cnncompress.storage.ccz_header import HEADER, encode_manifest, header_size, pack_header
    _, version, length = HEADER.unpack(raw[:HEADER.size])
    encoded = encode_manifest(manifest, version)
    start = header_size(version)  # re-hashed, as a hostile writer would: the validation behind it must hold
    path.write_bytes(pack_header(encoded, version) + encoded + raw[start + length:])
    with pytest.raises(InputError, match="bit-packed blob"):
        storage.load(path)
    with pytest.raises(ValueError):
        CODEC.check(10, {"scale": "filter"}, (4, 8))


# ---------------------------------------------------------------- the shared layer rule and contract
def _binarized(net: nn.Module) -> list[str]:
    """Paths of the float layers that became binary (the ``.binary`` of an inserted block counts as its layer)."""
    return [path.removesuffix(".binary") for path, m in net.named_modules() if isinstance(m, B._Binary)]


@pytest.mark.parametrize("name", ["binaryconnect", "bwn", "xnor", "binact"])
def test_layers_conv_binarizes_only_convs(name):
    net = methods.apply(_vgg(), name, layers="conv")
    assert _binarized(net) == ["features.conv2", "features.conv3", "features.conv4", "features.conv5"]
    for path in ("classifier.fc6", "classifier.fc7", "classifier.fc8", "features.conv1"):  # first stays float
        assert type(net.get_submodule(path)) in (nn.Linear, nn.Conv2d)
    assert net(torch.randn(2, 1, 48, 48)).shape == (2, 10)


def test_layers_default_all_is_the_previous_choice():
    everything = ["features.conv2", "features.conv3", "features.conv4", "features.conv5", "classifier.fc6",
                  "classifier.fc7"]
    assert _binarized(methods.apply(_vgg(), "xnor")) == everything
    assert _binarized(methods.apply(_vgg(), "xnor", layers="all")) == everything
    assert _binarized(methods.apply(_vgg(), "bwn", layers="linear")) == ["classifier.fc6", "classifier.fc7"]
    assert _binarized(methods.apply(_vgg(), "bwn", layers="linear", keep_last=False)) == [
        "classifier.fc6", "classifier.fc7", "classifier.fc8"]


def test_layers_glob_and_list():
    net = methods.apply(_vgg(), "bwn", layers="features.conv[34]")
    assert _binarized(net) == ["features.conv3", "features.conv4"]
    net = methods.apply(_vgg(), "xnor", layers=["fc6", "features.conv5"])
    assert _binarized(net) == ["features.conv5", "classifier.fc6"]
    assert isinstance(net.features.conv5, nn.Sequential) and type(net.features.conv4) is nn.Conv2d
    assert net.compression_history[-1]["config"] == {"layers": ["fc6", "features.conv5"]}
    # keep_first / keep_last win over layers: the network's first and last layers stay full precision
    assert _binarized(methods.apply(_vgg(), "bwn", layers=["conv1", "conv2", "fc8"])) == ["features.conv2"]
    assert _binarized(methods.apply(_vgg(), "bwn", layers=["conv1", "fc8"], keep_first=False)) == ["features.conv1"]


def test_layers_errors():
    with pytest.raises(InputError, match="no layer matches 'features.conv9'"):
        methods.apply(_vgg(0.125), "xnor", layers="features.conv9")
    with pytest.raises(InputError, match="no layer matches 'fc99'"):
        methods.apply(_vgg(0.125), "bwn", layers=["fc6", "fc99"])
    with pytest.raises(InputError, match="layers must be"):
        methods.apply(_vgg(0.125), "binaryconnect", layers=3)
    with pytest.raises(InputError, match="no eligible layers"):  # only the kept first layer was named
        methods.apply(_vgg(0.125), "binact", layers="conv1")


def test_layers_follow_the_contract_and_registry():
    from cnncompress.layers import LAYERS, CompressedLayer, layer_config
    compressed = (B.BinaryConv2d, B.BinaryLinear, B.SignedConv2d, B.SignedLinear, B.XnorConv2d, B.XnorLinear)
    for cls in compressed + (B.BlockNorm2d, B.BlockNorm1d, B.FastLocalResponseNorm, B.FastMaxPool2d):
        assert LAYERS[cls.__name__][0] is cls
    for cls in compressed:
        assert cls.__mro__.index(CompressedLayer) < cls.__mro__.index(nn.Module)  # before the torch base
    binary = B.BinaryConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), binary_input=True)
    assert layer_config(binary)["binary_input"] is True and layer_config(binary)["padding"] == [1, 1]
    assert layer_config(B.FastMaxPool2d(3, 2, ceil_mode=True)) == layer_config(nn.MaxPool2d(3, 2, ceil_mode=True))
    assert layer_config(B.BlockNorm2d(5)) == {"num_features": 5}


def test_inference_layers_from_float():
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(5, 6, 3, padding=1), nn.Linear(70, 4)
    x, v = torch.randn(2, 5, 7, 7), torch.randn(3, 70)
    xnor_conv = B.BinaryConv2d.from_float(conv, binary_input=True)
    with torch.no_grad():
        for fast, reference in ((B.XnorConv2d.from_float(conv), xnor_conv),
                                (B.XnorConv2d.from_float(xnor_conv), xnor_conv),
                                (B.SignedConv2d.from_float(conv), B.BinaryConv2d.from_float(conv))):
            torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-5)
        for fast, reference in ((B.XnorLinear.from_float(linear), B.BinaryLinear.from_float(linear, binary_input=True)),
                                (B.SignedLinear.from_float(linear), B.BinaryLinear.from_float(linear))):
            torch.testing.assert_close(fast(v), reference(v), rtol=1e-4, atol=1e-5)
        lrn = nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0)
        y = torch.randn(1, 7, 5, 6)
        torch.testing.assert_close(B.FastLocalResponseNorm.from_float(lrn)(y), lrn(y))
