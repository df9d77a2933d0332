"""Filter pruning through residual adds, concatenations and depthwise convs (Torch-Pruning's dependency graph)."""
import pytest
import torch

from cnncompress import methods, models, storage
from cnncompress.methods.prune_groups import total_macs
from tests.zoo import UNSEEN, ZOO

NETS = {**ZOO, **UNSEEN}


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "densenet", "resnext"])
def test_every_coupled_group_is_pruned_to_the_mac_target(name, tmp_path):
    torch.manual_seed(0)
    net = NETS[name]().eval()
    net.spec = {"name": "user", "class": type(net).__name__, "in_channels": 1, "input_size": 48}
    pruned = methods.apply(net, "prune-l1", flops=0.5)
    x = torch.randn(2, 1, 48, 48)
    assert pruned.filter_pruning["macs_counted"] == "all layers (Conv2d + Linear)"
    assert pruned.filter_pruning["flops_removed"] >= 0.5
    assert total_macs(pruned, x[:1]) <= 0.5 * total_macs(net, x[:1]) + 1
    assert pruned(x).shape == net(x).shape
    storage.save(pruned, tmp_path / "p.ccz")
    assert torch.allclose(storage.load(tmp_path / "p.ccz", model=NETS[name])(x), pruned(x), atol=1e-5)


def test_the_emotion_cnn_is_pruned_too():
    net = models.build("mini_xception", num_classes=7, in_channels=1, input_size=64).eval()
    pruned = methods.apply(net, "prune-l1", flops=0.5)
    assert pruned.filter_pruning["flops_removed"] >= 0.5
    assert pruned(torch.randn(1, 1, 64, 64)).shape == (1, 7)
