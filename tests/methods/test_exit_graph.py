"""Early exits on networks whose forward is not a chain: the fx split really skips the rest for rows that exit."""
import pytest
import torch

from cnncompress import deploy, methods, storage
from cnncompress.methods.exit_graph import GraphExit, split_at
from tests.zoo import ZOO


@pytest.mark.parametrize("name, position", [("resnet_basic", "layer2"), ("densenet", "features.denseblock1"),
                                            ("functional_net", "conv2"), ("mobilenet_v2", "features.2")])
def test_the_split_graph_is_the_network(name, position):
    torch.manual_seed(0)
    net = ZOO[name]().eval()
    trunk, rest = split_at(net, position)
    x = torch.randn(3, 1, 48, 48)
    hidden, *live = trunk(x)
    assert torch.allclose(rest(*live), net(x), atol=1e-5)


def test_rows_that_exit_never_run_the_rest(tmp_path):
    torch.manual_seed(0)
    build = ZOO["resnet_basic"]
    net = build().eval()
    exited = methods.apply(net, "early-exit", position="layer2", threshold=0.0, input_size=48, in_channels=1)
    storage.save(exited, tmp_path / "e.ccz")
    deployed = deploy.to_inference(storage.load(tmp_path / "e.ccz", model=build))
    assert isinstance(deployed, GraphExit)
    calls = []
    deployed.net.layer3[0].conv1.register_forward_hook(lambda *_: calls.append(1))  # a leaf after the cut
    x = torch.randn(4, 1, 48, 48)
    deployed(x)  # threshold 0: every row is confident enough
    assert deployed.last_exit.tolist() == [0, 0, 0, 0] and calls == []
    deployed.threshold = 1.0  # no row exits: the network's own answer
    assert torch.allclose(deployed(x).exp(), torch.softmax(net(x), 1), atol=1e-5)
    assert deployed.last_exit.tolist() == [1, 1, 1, 1] and calls == [1]


def test_cascade_loss_trains_both_exits():
    from cnncompress.methods.early_exit import cascade_finetune_loss
    torch.manual_seed(0)
    exited = methods.apply(ZOO["se_net"]().eval(), "early-exit", position="blocks.0", loss="soft", input_size=48,
                           in_channels=1)
    exited.train()
    loss = cascade_finetune_loss(exited, torch.randn(4, 1, 48, 48), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    final = [m for m in exited.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert exited.exit_head.fc.weight.grad.abs().sum() > 0 and final.weight.grad.abs().sum() > 0
