"""NativeSequential: an XNOR model's blocks in one native call each == the same layers run one by one."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import deploy, methods, models, storage
from cnncompress.kernels import binary_graph
from cnncompress.deploy import xnor as BG

pytestmark = pytest.mark.skipif(not binary_graph.available(), reason="no C compiler: native chains unavailable")


def _xnor(width=0.25, size=48, channels=1):
    torch.manual_seed(0)
    net = models.build("vgg_s", num_classes=10, in_channels=channels, input_size=size, width=width).eval()
    net = methods.apply(net, "xnor")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # spread BatchNorm statistics as after fine-tuning, so no sign sits on 0
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
    return deploy.to_inference(net.eval())


def _reference(model, x):
    """The same layers called one by one (nn.Sequential's forward)."""
    with torch.no_grad():
        return nn.Sequential.forward(model.classifier, nn.Sequential.forward(model.features, x))


def _steps(block):
    return next(iter(block._plans.values()))[2]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [48, 61])
def test_whole_xnor_vgg_s_native_equals_layer_by_layer(threads, size):
    model = _xnor()
    assert isinstance(model.features, BG.NativeSequential) and isinstance(model.classifier, BG.NativeSequential)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(3, 1, size, size)
        with torch.no_grad():  # 61: another input size (the classifier expects 48's feature map: features only)
            out = model(x) if size == 48 else model.features(x)
            expected = _reference(model, x) if size == 48 else nn.Sequential.forward(model.features, x)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        assert [type(s) for s in _steps(model.features)] == [binary_graph.NativeChain]  # one call for all of it
    finally:
        torch.set_num_threads(before)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_gradients_and_export_take_the_module_path(tmp_path):
    model = _xnor()
    x = torch.randn(2, 1, 48, 48, requires_grad=True)
    out = model(x)  # an input that wants a gradient: the modules run (the native chain has no backward)
    assert model.features._plans == {}
    torch.testing.assert_close(out.detach(), _reference(model, x.detach()), rtol=1e-4, atol=1e-5)
    torch.onnx.export(model, (x.detach(),), str(tmp_path / "xnor.onnx"), dynamo=False)  # traced: module path
    assert model.features._plans == {}
    model.train()
    with torch.no_grad():
        model(x)
    assert model.features._plans == {}


def test_plan_follows_in_place_weight_changes_and_copies():
    model = _xnor()
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        first = model(x)
        model.classifier.fc8.weight.mul_(-1)  # in place: the next call lowers the block again
        second = model(x)
    torch.testing.assert_close(second, _reference(model, x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first, second)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.features._plans == {}
        with torch.no_grad():
            torch.testing.assert_close(clone(x), second)


def test_ccz_round_trip_keeps_native_blocks(tmp_path):
    model = _xnor()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        expected = model(x)
        loaded = storage.load(storage.save(model, tmp_path / "xnor-fast.ccz"))
        assert isinstance(loaded.features, BG.NativeSequential)
        torch.testing.assert_close(loaded(x), expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_unsupported_layer_splits_the_block_and_big_float_convs_leave_the_native_tile(monkeypatch, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_splits(monkeypatch, threads)
    finally:
        torch.set_num_threads(previous)


def _with_stem(model, stem):
    for module in model.modules():
        if isinstance(module, BG.NativeSequential):
            module.stem = stem
    return model.eval()  # eval() drops the cached plans


def _check_splits(monkeypatch, threads):
    model = _with_stem(_xnor(), "fp32")
    model.features.relu3 = nn.Tanh()  # no native op: runs between two native chains
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        out = model(x)
    assert [type(s).__name__ for s in _steps(model.features)] == ["NativeChain", "Tanh", "NativeChain"]
    torch.testing.assert_close(out, _reference(model, x), rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(BG, "FLOAT_CONV_MACS", 1000)  # conv1 too big for the native tile: it leaves the chain
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)
    first = _steps(model.features)[0]
    if threads == 1:  # PyTorch runs it
        assert isinstance(first, nn.Conv2d)
    else:  # onnxruntime with sleeping threads (no OpenMP workers spinning on the chain's cores), same values
        assert isinstance(first, BG.QuietConv)
        conv = model.features.conv1
        with torch.no_grad():
            torch.testing.assert_close(first(x), conv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_stem_takes_the_big_conv_with_its_relu_norm_and_pool(monkeypatch, threads):
    """stem "bf16": conv1 (too big for the native tile) runs in bf16 with ReLU, LRN and pool in one native
    epilogue; == the same bf16 conv followed by the PyTorch layers, and close to the fp32 model."""
    monkeypatch.setattr(BG, "FLOAT_CONV_MACS", 1000)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _with_stem(_xnor(), "bf16")
        x = torch.randn(2, 1, 48, 48)
        with torch.no_grad():
            out = model(x)
            steps = _steps(model.features)
            assert [type(s).__name__ for s in steps] == ["Bf16Conv", "NativeChain"]
            stem = steps[0]
            assert [type(layer).__name__ for layer in stem.layers] == ["ReLU", "FastLocalResponseNorm",
                                                                      "FastMaxPool2d"]
            torch.testing.assert_close(stem(x), stem.reference(x), rtol=1e-5, atol=1e-6)
            expected_stem = model.features.pool1(model.features.norm1(F.relu(model.features.conv1(x))))
            torch.testing.assert_close(stem(x), expected_stem, rtol=0.02, atol=0.02)  # bf16 inputs and weights
            torch.testing.assert_close(model.classifier(steps[1].run(stem.reference(x))), out, rtol=1e-4, atol=1e-5)
            assert torch.get_num_threads() == threads  # the stem ran on one thread and gave the others back
    finally:
        torch.set_num_threads(previous)


def test_stem_auto_is_bf16_exactly_where_the_cpu_computes_bf16_and_no_lower_path_is_forced(monkeypatch):
    monkeypatch.delenv("CNNCOMPRESS_ISA", raising=False)
    monkeypatch.setattr(BG.cpu, "has_bf16", lambda: True)  # AVX512-BF16 or AMX bf16
    assert BG.stem_precision("auto") == "bf16"
    for lower in ("avx2", "scalar"):  # standing in for a CPU without AVX-512: no bf16 dot products either
        monkeypatch.setenv("CNNCOMPRESS_ISA", lower)
        assert BG.stem_precision("auto") == "fp32"
    monkeypatch.setenv("CNNCOMPRESS_ISA", "no-such-isa")  # refused where the kernels are built, not here
    assert BG.stem_precision("auto") == "bf16"
    monkeypatch.delenv("CNNCOMPRESS_ISA")
    monkeypatch.setattr(BG.cpu, "has_bf16", lambda: False)
    assert BG.stem_precision("auto") == "fp32"
    assert BG.stem_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="stem 'fp16'"):
        BG.to_inference(models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.25), "fp16")


def test_only_blocks_with_xnor_layers_become_native():
    torch.manual_seed(0)
    bwn = deploy.to_inference(methods.apply(models.build("vgg_s", num_classes=10, in_channels=1, input_size=48,
                                                          width=0.25), "bwn"))
    assert type(bwn.features) is nn.Sequential


def test_results_environment_records_the_stem_that_runs(monkeypatch):
    from cnncompress.experiments.environment import environment
    monkeypatch.delenv("CNNCOMPRESS_ISA", raising=False)
    for bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(BG.cpu, "has_bf16", lambda bf16=bf16: bf16)
        assert environment()["xnor_float_stem"] == expected
