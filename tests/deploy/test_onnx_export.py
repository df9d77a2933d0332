"""onnx_export: the ONNX-friendly LRN equals torch's, and exported graphs lose the slow nodes but not accuracy."""
import collections

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncompress import measure, models
from cnncompress.deploy import onnx_export
from cnncompress.deploy.onnx_export import OnnxLocalResponseNorm, OnnxLRNNode, onnx_friendly


@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 0.75), (3, 0.5), (1, 1.0)])
def test_lrn_matches_torch_reference(size, beta):
    torch.manual_seed(size)
    x = torch.randn(3, 11, 6, 7) * 8  # large values so that the normalisation term matters
    layer = OnnxLocalResponseNorm.from_float(nn.LocalResponseNorm(size, alpha=1e-2, beta=beta, k=2.0))
    expected = F.local_response_norm(x, size, 1e-2, beta, 2.0)
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, x / 2 ** beta, rtol=1e-3)  # the test would notice a dropped window term
    three_d = torch.randn(2, 5, 9)
    assert torch.allclose(layer(three_d), F.local_response_norm(three_d, size, 1e-2, beta, 2.0))


def test_onnx_friendly_swaps_on_a_copy():
    model = models.build("vgg_s", 10, 1, 48, 0.25)
    friendly = onnx_friendly(model)
    assert isinstance(friendly.features.norm1, OnnxLocalResponseNorm)
    assert type(model.features.norm1) is nn.LocalResponseNorm  # the original is untouched
    plain = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert onnx_friendly(plain) is plain


def test_vgg_s_export_has_no_shape_ops_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = models.build("vgg_s", 10, 1, 48, 0.25).eval()
    path = measure.export_onnx(model, (1, 1, 48, 48), tmp_path / "vgg.onnx")
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert not {"Shape", "If", "Pow", "Gather"} & set(ops), ops
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 48, 48) * 4
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]  # dynamic batch: 3 though exported at 1
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_single_node_lrn_twin_exports_one_lrn_node():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)).eval()
    twin = onnx_friendly(model, OnnxLRNNode)
    assert isinstance(twin[2], OnnxLRNNode) and isinstance(model[2], nn.LocalResponseNorm)
    x = torch.randn(2, 1, 12, 12) * 4
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(twin(x), expected)
    proto = onnx_export.export_proto(model, x[:1], "torchscript-lrn")  # int8's "torchscript-lrn" uses the twin
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("LRN") == 1 and "Pow" not in ops
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_friendly_swaps_nested_and_root_lrn():
    model = nn.Sequential(nn.Sequential(nn.LocalResponseNorm(3)), nn.LocalResponseNorm(5))
    friendly = onnx_friendly(model)
    assert isinstance(friendly[0][0], OnnxLocalResponseNorm) and isinstance(friendly[1], OnnxLocalResponseNorm)
    assert friendly[1].size == 5 and type(model[1]) is nn.LocalResponseNorm
    assert isinstance(onnx_friendly(nn.LocalResponseNorm(3), OnnxLRNNode), OnnxLRNNode)


def test_export_proto_unties_shared_initializers_and_restores_mode():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(conv, nn.ReLU(), conv).train()  # one weight used twice: shared initializer
    x = torch.randn(1, 2, 4, 4)
    proto = onnx_export.export_proto(model, x)
    assert model.training
    names = {t.name for t in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    assert len(convs) == 2 and all(node.input[1] in names for node in convs)
    assert not [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in names]
    session = onnx_export.session(proto.SerializeToString(), 1)  # bytes or a path
    with torch.no_grad():
        assert np.allclose(session.run(None, {"input": x.numpy()})[0], model.eval()(x).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="exporter"):
        onnx_export.export_bytes(model, x, "nope")


def test_export_file_falls_back_to_dynamo(tmp_path, monkeypatch):
    """``export_file`` (``measure.export_onnx``): if the TorchScript exporter fails, the dynamo one is used."""
    calls = []
    real = onnx_export._torch_export

    def flaky(model, example, target, exporter, opset):
        calls.append(exporter)
        if exporter != "dynamo":
            raise RuntimeError("torchscript exporter failed")
        return real(model, example, target, exporter, opset)
    monkeypatch.setattr(onnx_export, "_torch_export", flaky)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with pytest.raises(RuntimeError, match="torchscript"):
        measure.export_onnx(model, (1, 1, 6, 6), tmp_path / "a.onnx", fallback=False)
    path = measure.export_onnx(model, (1, 1, 6, 6), tmp_path / "b.onnx")
    assert calls == ["torchscript-friendly", "torchscript-friendly", "dynamo"] and path.exists()
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        assert np.allclose(measure.onnx_session(path).run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-5)
