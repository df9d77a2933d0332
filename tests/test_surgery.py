"""The one layer-selection rule and the one replace helper (``cnncompress.surgery``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnncompress import models, surgery


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125)


def _paths(chosen):
    return [path for path, _ in chosen]


CONVS = ["features.conv1", "features.conv2", "features.conv3", "features.conv4", "features.conv5"]
FCS = ["classifier.fc6", "classifier.fc7", "classifier.fc8"]


@pytest.mark.parametrize("spec,expected", [
    ("all", CONVS + FCS),
    (None, CONVS + FCS),
    ("conv", CONVS),
    ("linear", FCS),
    ("fc", FCS),
    ("fc6", ["classifier.fc6"]),
    ("features.conv3", ["features.conv3"]),
    ("features.conv[34]", ["features.conv3", "features.conv4"]),
    ("classifier.*", FCS),
    (["fc8", "features.conv1", "conv"], CONVS + ["classifier.fc8"]),
])
def test_rule(vgg, spec, expected):
    assert _paths(surgery.select(vgg, spec)) == expected


def test_exclude_keep_first_keep_last(vgg):
    assert _paths(surgery.select(vgg, "all", exclude="classifier.*")) == CONVS
    assert _paths(surgery.select(vgg, "all", keep_first=True, keep_last=True)) == CONVS[1:] + FCS[:-1]
    # keep_first / keep_last refer to the network's first and last layer, whatever the user chose
    assert _paths(surgery.select(vgg, "linear", keep_first=True)) == FCS
    assert _paths(surgery.select(vgg, "linear", keep_last=True)) == FCS[:-1]


def test_types_and_where_are_the_methods_choice(vgg):
    assert _paths(surgery.select(vgg, "all", types=(nn.Linear,))) == FCS
    assert _paths(surgery.select(vgg, "all", where=lambda path, _: path.endswith("5"))) == ["features.conv5"]


@pytest.mark.parametrize("spec,message", [
    ("fc9", "no layer matches 'fc9'"),
    (["conv1", "nope*"], "no layer matches 'nope\\*'"),
    ([], "non-empty"),
    (3, "must be"),
    ("features.relu1", "is a ReLU, not a Conv2d or Linear"),
])
def test_a_spec_that_selects_nothing_is_an_error(vgg, spec, message):
    with pytest.raises(ValueError, match=message):
        surgery.select(vgg, spec)


def test_keep_flags_must_be_booleans(vgg):
    with pytest.raises(ValueError, match="keep_first"):
        surgery.select(vgg, "all", keep_first="yes")


def test_replace_and_replace_layers(vgg):
    model = models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125)
    model = surgery.replace(model, "features.conv2", nn.Identity())
    assert isinstance(model.features.conv2, nn.Identity)
    seen = []
    surgery.replace_layers(model, lambda path, layer: seen.append(path) or nn.Identity(), "classifier.fc[67]")
    assert seen == ["classifier.fc6", "classifier.fc7"] and isinstance(model.classifier.fc7, nn.Identity)
    assert isinstance(model.classifier.fc8, nn.Linear)
    assert surgery.replace(model, "", nn.Identity()).__class__ is nn.Identity  # the root itself


def test_replace_type_reaches_nested_modules_and_the_root():
    model = nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU(), nn.Tanh()))
    out = surgery.replace_type(model, nn.ReLU, lambda m: nn.Sigmoid())
    assert [type(m) for m in out.modules()].count(nn.Sigmoid) == 2
    assert isinstance(surgery.replace_type(nn.ReLU(), nn.ReLU, lambda m: nn.Tanh()), nn.Tanh)
