"""One native call per chain (kernels/binary_graph.c) == each op's PyTorch twin, at 1 and 2 threads, on every ISA
path of the C kernels the host can run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnncompress.kernels import binary_graph as G
from cnncompress.kernels import bitpack as bp
from cnncompress.kernels.native import ISAS
from cnncompress.methods.binarize_inference import XnorConv2d, XnorLinear
from cnncompress.methods.binarize_layers import BinaryConv2d, BinaryLinear

pytestmark = pytest.mark.skipif(not G.available(), reason="no C compiler: native chains unavailable")


@pytest.fixture(autouse=True, params=ISAS)
def every_isa(request, force_isa):
    """Every test of this module on each ISA path of the C kernels the host can run (``CNNCOMPRESS_ISA``)."""
    force_isa(request.param)
    assert G.kernel_path() == bp.kernel_path()  # bitpack.c is linked into the chain library: the same path
    return request.param


@pytest.fixture(params=[(1, G.MIN_WORK), (2, 0)], ids=["1-thread", "2-threads-split-every-op"])
def threads(request, monkeypatch):
    count, min_work = request.param
    monkeypatch.setattr(G, "MIN_WORK", min_work)
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    yield count
    torch.set_num_threads(before)


def _run(op_descs, x):
    return G.NativeChain(op_descs, tuple(x.shape[1:])).run(x)


@pytest.mark.parametrize("c,o,k,stride,padding,size", [(1, 24, 7, 2, 0, 48), (3, 5, 3, 1, 1, 13), (4, 33, 5, 3, 2, 17),
                                                         (2, 4, 1, 1, 0, 9)])
def test_float_conv_with_fused_relu_equals_torch(threads, c, o, k, stride, padding, size):
    weight, bias, x = torch.randn(o, c, k, k), torch.randn(o), torch.randn(2, c, size, size)
    spec = {"kind": "conv", "weight": weight, "bias": bias, "stride": (stride, stride), "padding": (padding, padding)}
    torch.testing.assert_close(_run([spec], x), F.conv2d(x, weight, bias, stride, padding), rtol=1e-5, atol=1e-5)
    fused = _run([{**spec, "bias": None, "relu": True}], x)
    torch.testing.assert_close(fused, F.relu(F.conv2d(x, weight, None, stride, padding)), rtol=1e-5, atol=1e-5)


def test_float_helpers_equal_torch(threads):
    x = torch.randn(2, 7, 11, 10)
    scale, shift = torch.rand(7) + 0.5, torch.randn(7)
    torch.testing.assert_close(_run([{"kind": "affine", "scale": scale, "shift": shift, "relu": True}], x),
                               F.relu(x * scale[:, None, None] + shift[:, None, None]))
    torch.testing.assert_close(_run([{"kind": "relu"}], x), F.relu(x))
    torch.testing.assert_close(_run([{"kind": "lrn", "size": 5, "alpha": 1e-3, "beta": 0.75, "k": 2.0}], x),
                               F.local_response_norm(x, 5, 1e-3, 0.75, 2.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_run([{"kind": "maxpool", "kernel": 3, "stride": 2, "ceil_mode": True}], x),
                               F.max_pool2d(x, 3, 2, ceil_mode=True))
    weight, bias = torch.randn(6, 7 * 11 * 10), torch.randn(6)
    out = _run([{"kind": "flatten"}, {"kind": "linear", "weight": weight, "bias": bias}], x)
    torch.testing.assert_close(out, F.linear(x.flatten(1), weight, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c,o,k,stride,padding,size,input_scale", [(24, 64, 5, 1, 2, 11, True), (3, 5, 3, 2, 1, 9, True),
                                                                   (130, 8, 3, 1, 1, 6, False), (64, 12, 3, 3, 0, 10, True)])
def test_xnor_conv_with_folded_norm_equals_the_layer(threads, c, o, k, stride, padding, size, input_scale):
    torch.manual_seed(c + o)
    layer = XnorConv2d.from_binary(BinaryConv2d.from_float(torch.nn.Conv2d(c, o, k, stride, padding),
                                                           binary_weights=True, scale="filter", binary_input=True,
                                                           input_scale=input_scale)).eval()
    x = (torch.randint(-8, 8, (2, c, size, size)) + 0.5) / 8  # dyadic, never 0: scale/shift below are exact
    scale, shift = torch.full((c,), 2.0), torch.full((c,), 0.25)
    spec = {"kind": "xconv", "wbits": layer.wbits, "alpha": layer.alpha, "bias": layer.bias, "kernel": layer.kernel_size,
            "stride": layer.stride, "padding": layer.padding, "input_scale": layer.input_scale,
            "correction": layer._correction, "scale": scale, "shift": shift, "relu": True}
    with torch.no_grad():
        expected = F.relu(layer(x * 2.0 + 0.25))
    torch.testing.assert_close(_run([spec], x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,o,input_scale", [(1, 4, True), (65, 3, True), (512, 1024, True), (200, 9, False)])
def test_xnor_linear_equals_the_layer(threads, k, o, input_scale):
    torch.manual_seed(k)
    layer = XnorLinear.from_binary(BinaryLinear.from_float(torch.nn.Linear(k, o), binary_weights=True, scale="filter",
                                                           binary_input=True, input_scale=input_scale)).eval()
    x = torch.randn(3, k)
    spec = {"kind": "xlinear", "wbits": layer.wbits, "alpha": layer.alpha, "bias": layer.bias,
            "input_scale": layer.input_scale}
    with torch.no_grad():
        torch.testing.assert_close(_run([spec], x), layer(x), rtol=1e-5, atol=1e-5)


def test_chain_checks_its_input_shape():
    chain = G.NativeChain([{"kind": "relu"}], (3, 4, 4))
    with pytest.raises(ValueError, match=r"laid out for \(3, 4, 4\)"):
        chain.run(torch.zeros(1, 3, 5, 4))


@pytest.mark.parametrize("ops", [(), ("relu",), ("lrn",), ("maxpool",), ("relu", "lrn", "maxpool"),
                                 ("relu", "maxpool")])
@pytest.mark.parametrize("beta,pool", [(0.75, (3, 3, True)), (0.6, (3, 2, True)), (0.75, (2, 2, False))])
def test_stem_epilogue_on_bf16_channels_last_equals_torch(threads, ops, beta, pool):
    """ReLU / LRN / max-pool on a bf16 NHWC conv output, written float NCHW in one pass == the PyTorch layers."""
    torch.manual_seed(len(ops))
    y = (torch.randn(2, 19, 23, 17) * 3).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    kernel, stride, ceil = pool
    op_descs, expected = [], y.float()
    if "relu" in ops:
        op_descs.append({"kind": "relu"})
        expected = F.relu(expected)
    if "lrn" in ops:
        op_descs.append({"kind": "lrn", "size": 5, "alpha": 5e-3, "beta": beta, "k": 2.0})
        expected = F.local_response_norm(expected, 5, alpha=5e-3, beta=beta, k=2.0)
    if "maxpool" in ops:
        op_descs.append({"kind": "maxpool", "kernel": kernel, "stride": stride, "ceil_mode": ceil})
        expected = F.max_pool2d(expected, kernel, stride, ceil_mode=ceil)
    epilogue = G.StemEpilogue(op_descs, tuple(y.shape[1:]))
    out = epilogue.run(y)
    assert out.is_contiguous() and out.dtype == torch.float32 and tuple(out.shape[1:]) == epilogue.out_shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_stem_epilogue_refuses_a_wrong_order_or_input():
    with pytest.raises(ValueError, match="in that order"):
        G.StemEpilogue([{"kind": "maxpool", "kernel": 2, "stride": 2, "ceil_mode": False}, {"kind": "relu"}],
                       (4, 8, 8))
    epilogue = G.StemEpilogue([{"kind": "relu"}], (4, 8, 8))
    with pytest.raises(ValueError, match="bf16 channels_last"):
        epilogue.run(torch.zeros(1, 4, 8, 8))  # float NCHW, not the bf16 channels_last a bf16 conv writes
