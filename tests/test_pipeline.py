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


def test_a_compressed_int8_file_carries_probes_of_the_run_and_checks_itself(tmp_path, vgg):
    """The file is written with probes of the run's validation images; loaded back it checks itself here."""
    from cnncompress import storage
    from cnncompress.pipeline import compress_and_measure
    from cnncompress.storage import probe_section as probe_store
    row = compress_and_measure(vgg, "int8", {}, tmp_path / "q", data="mnist5k", threads=1)
    assert row["probes"]["count"] == 32 and row["probes"]["source"] == "mnist5k val split" and \
        row["probes"]["bytes"] > 0 and "fake-quant twin" in row["probes"]["reference"], row["probes"]
    check = row["probe_check"]
    assert check["passed"] and check["agreement"] >= 99.0 and check["engine"] == "onnxruntime-int8-qdq", check
    assert probe_store.of(storage.load(row["file"])).count == 32


def test_probes_are_never_noise(tmp_path, vgg):
    from cnncompress.pipeline import compress_and_measure
    row = compress_and_measure(vgg, "int8", {"calibration": "noise", "num_calibration": 8}, tmp_path / "n",
                               threads=1)
    assert row["probes"] == {"count": 0, "source": "none: the run has no real images (give --data)"}
    assert "probe_check" in row and row["probe_check"] is None
    calibrated = compress_and_measure(vgg, "int8", {"calibration": "mnist5k", "num_calibration": 8},
                                      tmp_path / "c", threads=1)
    assert calibrated["probes"]["count"] == 32 and calibrated["probes"]["source"] == "the run's calibration images"
    assert calibrated["probe_check"]["passed"]
