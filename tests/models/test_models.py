import pytest
import torch

from cnncompress import models
from cnncompress.errors import InputError


def _params(name, **kw):
    with torch.device("meta"):
        model = models.build(name, **kw)
    return sum(p.numel() for p in model.parameters()), model


def test_paper_size_parameter_counts():
    vgg, model = _params("vgg_s", num_classes=8, in_channels=3, input_size=224)
    assert vgg == 98_844_296  # ~395 MB fp32
    assert model.classifier.fc6.in_features == 18432 and model.classifier.fc6.out_features == 4096
    squeeze, _ = _params("squeezenet1_1", num_classes=8, in_channels=3, input_size=224)
    assert squeeze == 726_600


@pytest.mark.parametrize("name, size", [("vgg_s", 48), ("squeezenet1_1", 48), ("cascade_cnn", 28)])
def test_small_presets_forward(name, size):
    model = models.build(name, num_classes=10, in_channels=1, input_size=size, width=0.25).eval()
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    assert model.spec == {"name": name, "num_classes": 10, "in_channels": 1, "input_size": size, "width": 0.25}


def test_width_scales_parameters():
    small, _ = _params("vgg_s", num_classes=8, in_channels=3, input_size=224, width=0.5)
    full, _ = _params("vgg_s", num_classes=8, in_channels=3, input_size=224)
    assert small < full / 3


@pytest.mark.parametrize("kwargs, problem", [({"name": "resnet"}, "unknown model"),
                                             ({"name": "vgg_s", "width": 0}, "bad model size"),
                                             ({"name": "vgg_s", "input_size": 20}, "too small")])
def test_bad_builds(kwargs, problem):
    with pytest.raises(InputError, match=problem):
        models.build(**kwargs)
