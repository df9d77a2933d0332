"""Every method that replaces layers reads ``layers=`` with the same rule: the same spec compresses the same
layers, and a spec naming nothing is a clean error, whichever the method."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnncompress import methods, models
from cnncompress.errors import InputError
from cnncompress.layers import CompressedLayer

# method -> extra options it needs to run quickly on a tiny model
LAYER_METHODS = {
    "hashed": {},
    "bwn": {"keep_first": False, "keep_last": False},
    "binaryconnect": {"keep_first": False, "keep_last": False},
    "xnor": {"keep_first": False, "keep_last": False},
    "binact": {"keep_first": False, "keep_last": False},
    "prune-magnitude": {"sparsity": 0.5},
    "kmeans": {"conv_bits": 2, "fc_bits": 2},
    "deep-compression": {"measure_stages": False, "conv_bits": 2, "fc_bits": 2},
    "fixed-point": {},
    "fp16": {},
    "int8": {"num_calibration": 8, "calibration": "noise"},
}
CONV_ONLY = {"cp": {"rank": 2, "n_iter_max": 2}, "tucker": {"rank": 2}, "prune-l1": {"flops": 0.3}}
LINEAR_ONLY = {"tt": {"rank": 2}}


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()


def _changed(before: nn.Module, after: nn.Module) -> list[str]:
    """Paths of the conv/linear layers of ``before`` whose module in ``after`` is no longer the plain layer."""
    out = []
    for path, module in before.named_modules():
        if type(module) in (nn.Conv2d, nn.Linear):
            try:
                now = after.get_submodule(path)
            except AttributeError:
                out.append(path)
                continue
            if type(now) is not type(module) or now.weight.shape != module.weight.shape \
                    or not torch.equal(now.weight, module.weight):
                out.append(path)
    return out


def _top(paths: list[str]) -> list[str]:
    """Layer paths, a compressed layer's insides (``x.binary``, ``x.0``) folded onto the layer."""
    known = ["features.conv1", "features.conv2", "features.conv3", "features.conv4", "features.conv5",
             "classifier.fc6", "classifier.fc7", "classifier.fc8"]
    return sorted({next(k for k in known if p == k or p.startswith(k + ".")) for p in paths})


def test_every_layer_replacing_method_takes_layers():
    takes = {name for name in methods.available()
             if "layers" in methods.get(name).apply_fn.__code__.co_varnames}
    assert set(LAYER_METHODS) | set(CONV_ONLY) | set(LINEAR_ONLY) | {"prune-taylor"} <= takes
    assert set(methods.available()) - takes == {"early-exit"}  # attaches a head at `position`, replaces nothing


@pytest.mark.parametrize("name", sorted(LAYER_METHODS))
def test_the_same_spec_selects_the_same_layers(vgg, name):
    spec = ["features.conv[23]", "fc7"]
    compressed = methods.apply(vgg, name, layers=spec, **LAYER_METHODS[name])
    assert _top(_changed(vgg, compressed)) == ["classifier.fc7", "features.conv2", "features.conv3"]
    kinds = {type(compressed.get_submodule(p)) for p in ("features.conv1", "classifier.fc8")}
    assert kinds <= {nn.Conv2d, nn.Linear}


@pytest.mark.parametrize("name", sorted(CONV_ONLY))
def test_conv_methods_follow_the_rule(vgg, name):
    compressed = methods.apply(vgg, name, layers="features.conv[45]", **CONV_ONLY[name])
    changed = _top(_changed(vgg, compressed))
    if name == "prune-l1":  # removing filters of conv4/conv5 also narrows the inputs of the layer after each
        assert {"features.conv4", "features.conv5"} <= set(changed) and "features.conv3" not in changed
    else:
        assert changed == ["features.conv4", "features.conv5"]
        assert all(isinstance(compressed.get_submodule(p), CompressedLayer) for p in changed)


def test_tt_follows_the_rule(vgg):
    compressed = methods.apply(vgg, "tt", layers="classifier.fc[67]", **LINEAR_ONLY["tt"])
    assert _top(_changed(vgg, compressed)) == ["classifier.fc6", "classifier.fc7"]


@pytest.mark.parametrize("name", sorted({**LAYER_METHODS, **CONV_ONLY, **LINEAR_ONLY}))
def test_a_layer_that_does_not_exist_is_a_clean_error(vgg, name):
    options = {**LAYER_METHODS, **CONV_ONLY, **LINEAR_ONLY}[name]
    with pytest.raises(InputError, match="no layer matches 'fc9'"):
        methods.apply(vgg, name, layers=["fc9"], **options)
