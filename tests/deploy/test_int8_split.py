"""Where int8 pays: every float prefix of a model's layers is built from one calibration, checked against its
fake-quant twin, timed deployed, and the fastest is returned as the ``layers`` of the int8 method."""
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import cnncompress
from cnncompress import methods
from cnncompress.data import build_dataset
from cnncompress.deploy import int8 as deploy_int8
from cnncompress.deploy.int8_split import Split, candidate, fastest_split, prefixes
from cnncompress.errors import InputError
from cnncompress.methods.int8 import _Int8Weight
from tests.zoo import ZOO


def _images(n=32):
    return build_dataset("mnist5k", "val", input_size=48).images[:n]


def test_prefixes_are_every_length_or_spread_evenly_with_zero_kept():
    assert prefixes(5) == [0, 1, 2, 3, 4]
    spread = prefixes(100, limit=8)
    assert spread[0] == 0 and spread[-1] == 99 and len(spread) <= 8 and spread == sorted(set(spread))


def test_a_candidate_keeps_its_prefix_float_with_the_original_weights_and_quantises_only_the_rest(vgg):
    images = _images()
    full = methods.apply(vgg, "int8", calibration=images, num_calibration=len(images))
    order = deploy_int8.layer_calls(vgg, images[:1])
    built = candidate(full, vgg, order[:2])
    modules, originals = dict(built.named_modules()), dict(vgg.named_modules())
    for path in order[:2]:
        assert type(modules[path]) is nn.Conv2d and torch.equal(modules[path].weight, originals[path].weight)
    assert all(isinstance(modules[path], _Int8Weight) for path in order[2:])
    graph = onnx.load_from_string(deploy_int8.int8_onnx(built))
    initializers = {init.name for init in graph.graph.initializer}
    weight_dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers
                 and len(numpy_helper.to_array(next(i for i in graph.graph.initializer
                                                     if i.name == n.input[0])).shape) > 1]
    assert len(weight_dq) == len(order) - 2  # one int8 weight per quantised layer, none for the float prefix


def test_the_split_returned_is_the_fastest_candidate_timed_and_applies_as_the_int8_layers(vgg):
    images = _images()
    split = fastest_split(vgg, images, runs=3, block=1)
    order = deploy_int8.layer_calls(vgg, images[:1])
    assert isinstance(split, Split) and split.engine == "onnxruntime-int8" and split.input_shape == (1, 1, 48, 48)
    assert set(split.ms) | set(split.skipped) == set(prefixes(len(order)))
    best = min(split.ms, key=split.ms.get)  # the label is the measurement's argmin
    assert split.float_layers == order[:best] and split.layers == order[best:]
    applied = methods.apply(vgg, "int8", layers=split.layers, calibration=images, num_calibration=len(images))
    modules = dict(applied.named_modules())
    assert [p for p in order if isinstance(modules[p], _Int8Weight)] == split.layers
    assert split.as_dict()["ms"] == {str(k): v for k, v in split.ms.items()}


def test_a_model_without_layers_or_without_images_is_refused_in_one_line():
    with pytest.raises(InputError, match="calls no Conv2d/Linear layer"):
        fastest_split(nn.Sequential(nn.ReLU(), nn.Flatten()), _images(4))
    with pytest.raises(InputError, match=r"\(N, C, H, W\) tensor of real images"):
        fastest_split(nn.Conv2d(1, 2, 3), torch.zeros(3, 48))


def test_the_method_alone_refuses_fastest_it_cannot_time_an_engine(vgg):
    with pytest.raises(InputError, match="measured on an engine"):
        methods.apply(vgg, "int8", layers="fastest", calibration=_images(4), num_calibration=4)


def test_compress_resolves_layers_fastest_on_the_runs_images_and_records_the_split(vgg):
    compressed, row = cnncompress.compress(vgg, "int8", "mnist5k", layers="fastest", num_calibration=16)
    split = row["int8_split"]
    modules = dict(compressed.named_modules())
    assert split["layers"] == [p for p in split["float_layers"] + split["layers"] if isinstance(modules[p], _Int8Weight)]
    assert all(type(modules[p]) in (nn.Conv2d, nn.Linear) for p in split["float_layers"])
    assert row["config"]["layers"] == "fastest"
    with pytest.raises(InputError, match="give the run's data"):
        cnncompress.compress(vgg, "int8", layers="fastest", calibration=_images(4))


@pytest.mark.parametrize("net_name", sorted(ZOO))
def test_every_zoo_network_gets_a_split_that_covers_its_layers_and_deploys(net_name):
    """Residuals, depthwise, concatenation, squeeze-and-excitation, a functional forward: the prefixes follow the
    forward's call order, and the chosen split applied and deployed runs (or no candidate could: one line)."""
    torch.manual_seed(0)
    net = ZOO[net_name](num_classes=10, in_channels=1).eval()
    images = _images(24)
    order = deploy_int8.layer_calls(net, images[:1])
    split = fastest_split(net, images, runs=2, block=1, limit=4)
    assert split.float_layers + split.layers == order
    assert set(split.ms) | set(split.skipped) == set(prefixes(len(order), 4))
    net.spec = {"name": "user", "in_channels": 1, "input_size": 48}  # what cnncompress.compress learns from the data
    applied = methods.apply(net, "int8", layers=split.layers, calibration=images, num_calibration=len(images))
    deployed = cnncompress.deploy.to_inference(applied)
    with torch.inference_mode():
        assert deployed(images[:2]).shape == (2, 10)


def test_a_network_int8_cannot_export_is_refused_in_one_line():
    """The functional zoo net at 32x32 pools 4x4 to 3x3, which the ONNX exporter cannot write: one line."""
    torch.manual_seed(0)
    net = ZOO["functional_net"](num_classes=10, in_channels=1).eval()
    with pytest.raises(InputError) as error:
        fastest_split(net, _images(8)[:, :, 8:40, 8:40].contiguous(), runs=2, block=1, limit=2)
    assert "\n" not in str(error.value) and "FunctionalNet" in str(error.value)
