import pytest
import torch
from torch import nn

from cnncompress import deploy, models
from cnncompress.budget.latency_model import LatencyModel, layer_graph, layer_shapes


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return models.build("vgg_s", 10, 1, 48, width=0.125).eval()


def test_layer_shapes_see_each_layer_input_and_count_its_output(vgg):
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, o.numel()))
             for p, m in vgg.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    vgg(torch.zeros(1, 1, 48, 48))
    for hook in hooks:
        hook.remove()
    shapes = layer_shapes(vgg, (1, 1, 48, 48))
    assert list(shapes) == list(seen) and len(shapes) == 8
    assert shapes["features.conv1"].input == (1, 1, 48, 48)
    assert {p: s.output_elements for p, s in shapes.items()} == seen


@pytest.mark.parametrize("path", ["features.conv2", "classifier.fc6"])
def test_one_layer_graph_computes_the_layer_shape_in_onnxruntime(vgg, path):
    """The graph timed for a layer is that layer's op at its real shapes: same output shape as the torch layer, and
    the int8 version is a QDQ graph that the int8 engine accepts."""
    shape = layer_shapes(vgg, (1, 1, 48, 48))[path]
    layer = dict(vgg.named_modules())[path]
    x = torch.rand(*shape.input)
    run = deploy.prepare("onnxruntime", layer_graph(shape), shape.input, 1)
    assert run(x).shape == layer(x).shape
    run8 = deploy.prepare("onnxruntime-int8", layer_graph(shape, "int8"), shape.input, 1)
    assert run8(x).shape == layer(x).shape
    with pytest.raises(deploy.EngineUnavailable):
        deploy.prepare("onnxruntime-int8", layer_graph(shape), shape.input, 1)  # a float graph is not int8


def test_prediction_is_the_additive_model_and_learns_from_a_measurement(vgg, monkeypatch):
    """With per-layer and per-call times fixed, the prediction is call + (between layers) x volume ratio + the
    candidate's layers; after one whole model is measured, the same prediction there returns the measurement."""
    latency = LatencyModel(vgg, (1, 1, 48, 48))
    monkeypatch.setattr(latency, "layer_ms", lambda shape, engine: shape.weight[0] * (0.5 if "int8" in engine
                                                                                      else 1.0) / 10000)
    monkeypatch.setattr(latency, "call_ms", lambda engine: 0.05)
    original = latency.shapes
    inside = sum(s.weight[0] for s in original.values()) / 10000
    assert latency.predict(original, "onnxruntime", 1.0) == pytest.approx(1.0)  # the original predicts itself
    int8 = latency.predict(original, "onnxruntime-int8", 1.0)
    assert int8 == pytest.approx(1.0 - inside / 2)  # only the layers changed precision
    halved = {p: type(s)(s.kind, (max(1, s.weight[0] // 2), *s.weight[1:]), s.input, s.stride, s.padding,
                         s.dilation, s.groups, s.bias) for p, s in original.items()}
    volume = sum(s.output_elements for s in halved.values()) / sum(s.output_elements for s in original.values())
    between = 1.0 - 0.05 - inside
    expected = 0.05 + between * volume + sum(s.weight[0] for s in halved.values()) / 10000
    assert latency.predict(halved, "onnxruntime", 1.0) == pytest.approx(expected)
    latency.observe(int8, 0.8 * int8, "onnxruntime-int8")
    assert latency.predict(original, "onnxruntime-int8", 1.0) == pytest.approx(0.8 * int8)
    assert latency.predict(original, "onnxruntime", 1.0) == pytest.approx(1.0)  # another engine: not corrected
