"""Binarization methods: layers, STE, clipping, stochastic sign, reorder, fast path == reference, .ccz, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnncompress import methods, models, storage
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
    from cnncompress.train import _after_step
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
    fast = methods.to_inference(copy.deepcopy(net))
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
        fast = methods.to_inference(loaded)
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
        fast = methods.to_inference(loaded)
        packed = storage.load(storage.save(fast, tmp_path / "xnor-fast.ccz"))
        assert isinstance(packed.features.conv4.binary, B.XnorConv2d)
        torch.testing.assert_close(methods.to_inference(packed)(x), fast(x))
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
    import json
    import struct
    entry = next(e for e in manifest["tensors"] if e["codec"] == "bitpack")
    entry["shape"][1] += 64  # the blob no longer matches the declared shape
    encoded = json.dumps(manifest).encode()
    head = struct.Struct("<4sIQ")
    _, version, length = head.unpack(raw[:head.size])
    path.write_bytes(head.pack(b"CCZ\x00", version, len(encoded)) + encoded + raw[head.size + length:])
    with pytest.raises(InputError, match="bit-packed blob"):
        storage.load(path)
    with pytest.raises(ValueError):
        CODEC.check(10, {"scale": "filter"}, (4, 8))


def test_registered_with_honest_labels():
    assert methods.info("xnor").speed == "real" and methods.info("xnor").size == "real"
    assert methods.info("bwn").size == "real" and methods.info("bwn").speed == "none"
    assert methods.info("binact").size == "simulated"
    for name in ("binaryconnect", "bwn", "xnor", "binact"):
        assert methods.info(name).bench
