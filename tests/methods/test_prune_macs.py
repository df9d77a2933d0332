"""The ``flops=`` target of filter pruning counts every Conv2d and Linear layer's MACs, on the sequential path
(``prune_filters``) as on the dependency-graph path (``prune_groups``), and the result says so."""
import pytest
import torch
from torch import nn

from cnncompress import methods
from cnncompress.methods.prune_macs import MACS_COUNTED, layer_macs, total_macs


def _vgg_like() -> nn.Sequential:
    """Three conv stages and two fc layers: the fc layers hold ~22 % of the MACs, so a conv-only count shows."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 4 * 4, 1024), nn.ReLU(), nn.Linear(1024, 10))
    net.spec = {"name": "user", "class": "Sequential", "in_channels": 1, "input_size": 32}
    return net.eval()


def _macs(net: nn.Module) -> list[tuple[int, int, int]]:
    """``(MACs, outputs, input channels)`` of each conv / fc layer, counted here by hand from the layer shapes:
    k*k*C_in*C_out*H_out*W_out per conv (3x3, 'same' padding, 2x2 pools), in*out per fc layer."""
    sizes, layers = {0: 32, 3: 16, 6: 8}, []
    for index, layer in enumerate(net):
        if isinstance(layer, nn.Conv2d):
            layers.append((9 * layer.in_channels * layer.out_channels * sizes[index] ** 2, layer.out_channels,
                           layer.in_channels))
        elif isinstance(layer, nn.Linear):
            flat = layer.in_features // 16 if index == 10 else layer.in_features  # fc after the flatten: 4x4 block
            layers.append((layer.in_features * layer.out_features, layer.out_features, flat))
    return layers


def _conv_and_linear_macs(net: nn.Module) -> int:
    return sum(macs for macs, _, _ in _macs(net))


def _one_channel(net: nn.Module) -> int:
    """The most MACs one filter of the unpruned net carries: its own row and its consumer's column."""
    layers = _macs(net)
    return max(a / a_out + b / b_in for (a, a_out, _), (b, _, b_in) in zip(layers[:3], layers[1:4]))


def test_the_counter_counts_conv_and_linear_macs():
    net = _vgg_like()
    assert total_macs(net, torch.zeros(1, 1, 32, 32)) == _conv_and_linear_macs(net)
    assert set(layer_macs(net, torch.zeros(1, 1, 32, 32))) == {"0", "3", "6", "10", "12"}


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_flops_half_removes_half_of_every_layers_macs_on_a_chain(criterion):
    net = _vgg_like()
    extra = {}
    if criterion == "taylor":
        images = torch.randn(16, 1, 32, 32)
        extra = {"data": (images, torch.randint(0, 10, (16,))), "samples": 16, "steps": 2}
    pruned = methods.apply(net, f"prune-{criterion}", flops=0.5, round_to=1, **extra)
    before, after = _conv_and_linear_macs(net), _conv_and_linear_macs(pruned)
    info = pruned.filter_pruning
    assert info["macs_counted"] == MACS_COUNTED == "all layers (Conv2d + Linear)"
    assert (info["macs_before"], info["macs_after"]) == (before, after)
    assert info["flops_removed"] == pytest.approx(1 - after / before)
    assert 0.5 <= 1 - after / before <= 0.5 + _one_channel(net) / before  # one filter: the target's granularity
    assert info["conv_macs_before"] == before - (512 * 1024 + 1024 * 10)
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 10)
