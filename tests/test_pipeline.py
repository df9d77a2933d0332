"""``cnncompress.compress``: any network through a method, its BatchNorm statistics re-estimated, and the collapse
check that says "chance" out loud."""
import pytest
import torch

import cnncompress
from cnncompress.data import build_dataset
from cnncompress.training.trainer import TrainConfig, Trainer
from tests.zoo import ZOO


@pytest.fixture(scope="module")
def trained_resnet():
    train = build_dataset("mnist5k", "train", input_size=28)
    torch.manual_seed(0)
    net = ZOO["resnet_basic"](num_classes=10, in_channels=1)
    Trainer(net, train, None, TrainConfig(epochs=1, lr=0.05, batch_size=64), progress=False).fit()
    return net.eval()


@pytest.mark.parametrize("method", ["bwn", "binaryconnect"])
def test_batch_norm_re_estimation_alone_brings_a_binarised_resnet_back(trained_resnet, method, capsys):
    small, row = cnncompress.compress(trained_resnet, method, data="mnist5k")
    assert row["bn_recalibrated"] == 1024 and row["layers_replaced"] > 0 and row["finetune"] == 0
    assert row["checked"] and not row["collapsed"] and row["val_accuracy"] > 50, row
    assert "chance" not in capsys.readouterr().err
    assert small.spec["input_size"] == 28 and small.spec["in_channels"] == 1  # the card learnt the input shape


def test_a_collapsed_model_is_flagged_and_said(capsys):
    torch.manual_seed(0)
    untrained = ZOO["functional_net"](num_classes=10, in_channels=1)
    val = build_dataset("mnist5k", "val", input_size=28)
    _, row = cnncompress.compress(untrained, "fp16", data=build_dataset("mnist5k", "train", input_size=28), val=val)
    assert row["collapsed"] is True and row["val_accuracy"] <= row["chance"] + 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chance" in err[0] and "fp16 on FunctionalNet" in err[0]


def test_a_selection_that_matches_nothing_is_an_error():
    from cnncompress.errors import InputError
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    with pytest.raises(InputError) as error:
        cnncompress.compress(net, "tt", layers="linear")
    assert "selects no Linear layer of Sequential" in str(error.value)
