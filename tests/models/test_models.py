import pytest
import torch
from torch import nn

from cnncompress import models
from cnncompress.errors import InputError
from cnncompress.models import build


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


@pytest.mark.parametrize("name, width", [("vgg_s", 0.25), ("squeezenet1_1", 0.5)])
def test_relu_models_start_from_he_init_with_zero_biases(name, width):
    """He et al. 2015 (normal, std sqrt(2 / fan_in)) for every ReLU layer, zero biases; the classifier's last layer
    N(0, 0.01) (VGG-S fc8, SqueezeNet conv10 as in the SqueezeNet reference, whose bias is FINAL_BIAS)."""
    from cnncompress.models.squeezenet import FINAL_BIAS
    torch.manual_seed(0)
    model = build(name, 10, 1, 48, width)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    last = layers[-1]
    for layer in layers[:-1]:
        fan_in, w = layer.weight[0].numel(), layer.weight.detach()
        assert float(w.std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.25 if w.numel() > 300 else 0.6), layer
        assert float(w.mean()) == pytest.approx(0.0, abs=3 * (2 / fan_in / w.numel()) ** 0.5 + 1e-3)
        if w.numel() > 2000:  # normal, not uniform: kurtosis 3 (a uniform draw has 1.8)
            assert float(((w - w.mean()) ** 4).mean() / w.var() ** 2) > 2.5, layer
        assert not layer.bias.any()
    assert float(last.weight.detach().std()) == pytest.approx(0.01, rel=0.2)
    assert torch.all(last.bias == (FINAL_BIAS if name == "squeezenet1_1" else 0.0))


def test_init_is_seeded():
    for name in ("vgg_s", "squeezenet1_1"):
        torch.manual_seed(3)
        a = build(name, 10, 1, 48, 0.25).state_dict()
        torch.manual_seed(3)
        b = build(name, 10, 1, 48, 0.25).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
