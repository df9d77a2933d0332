"""Every method x every network of the zoo (the CNNs users ship): it works or it refuses in one line.

Works means: ``cnncompress.compress`` returns a model; its ``.ccz`` is rebuilt from the same network builder and
gives the same outputs (round trip exact); the deployed form (``deploy.to_inference``) agrees with the compressed
PyTorch model (top-1 on real-looking images, within each method's tolerance); a method claiming a real size saving
writes a file smaller than the float network's. Refuses means an ``InputError`` / ``ValueError`` of one line. A
crash (any other exception) fails. The held-out ``UNSEEN`` networks are checked the same way, once, at the end.
"""
from __future__ import annotations

import math

import pytest
import torch

from cnncompress import compress, deploy, methods, storage
from cnncompress.data.datasets import ImageDataset
from cnncompress.errors import InputError
from tests.zoo import UNSEEN, ZOO

SIZE, CHANNELS, CLASSES = 32, 1, 10
EXIT_AT = {"resnet_basic": "layer2", "resnet_bottleneck": "layer2", "mobilenet_v2": "features.2",
           "densenet": "features.denseblock1", "se_net": "blocks.0", "functional_net": "conv2", "resnext": "stages.0",
           "inception_res": "block1"}
APPROXIMATE = {"int8", "bf16", "fp16", "fixed-point"}  # the deployed numerics differ from the PyTorch twin's
RESULTS: dict[tuple[str, str], str] = {}


def _data(n: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    # images whose class is visible (a bright square whose position is the label): deployed forms are checked on
    # structured images, not noise
    images = torch.randn(n, CHANNELS, SIZE, SIZE, generator=g) * 0.3
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 4)
        images[i, :, 4 + 6 * row:8 + 6 * row, 4 + 6 * col:8 + 6 * col] += 2.0
    return ImageDataset(images, labels, [str(c) for c in range(CLASSES)], "zoo-squares", 0.5, 0.5, "train")


TRAIN, VAL = _data(128, 0), _data(64, 1)


def _options(method: str, net: str) -> dict:
    if method == "early-exit":
        return {"position": EXIT_AT[net], "input_size": SIZE, "in_channels": CHANNELS}
    if method in ("cp", "tucker"):
        return {"layers": "conv"}
    return {}


def _network(builder):
    torch.manual_seed(0)
    net = builder(num_classes=CLASSES, in_channels=CHANNELS).eval()
    net.spec = {"name": "user", "class": type(net).__name__, "in_channels": CHANNELS, "input_size": SIZE}
    return net


def _check_cell(net_name: str, builder, method: str, tmp_path) -> str:
    net = _network(builder)
    try:
        compressed, row = compress(net, method, TRAIN, val=VAL, **_options(method, net_name))
    except (InputError, ValueError) as error:
        message = str(error)
        assert message and len(message.strip().splitlines()) == 1, f"{method} on {net_name}: {message!r}"
        return "refuses"
    float_file = storage.save(net, tmp_path / f"{net_name}-float.ccz")
    path = storage.save(compressed, tmp_path / f"{net_name}-{method}.ccz")
    loaded = storage.load(path, model=lambda: builder(num_classes=CLASSES, in_channels=CHANNELS))
    x = VAL.images[:16]
    with torch.no_grad():
        reference = compressed.eval()(x)
        again = loaded(x)
        assert torch.allclose(again, reference, atol=1e-4, rtol=1e-4), f"{method} on {net_name}: round trip differs"
        deployed = deploy.to_inference(loaded)(x)
    agree = (deployed.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agree >= (0.8 if method in APPROXIMATE else 0.99), f"{method} on {net_name}: deployed agrees {agree:.2f}"
    assert row["checked"] and isinstance(row["collapsed"], bool)
    if methods.info(method).size == "real":
        assert path.stat().st_size < float_file.stat().st_size, \
            f"{method} on {net_name}: labelled a real size saving, file {path.stat().st_size} >= float " \
            f"{float_file.stat().st_size}"
    return "works"


@pytest.mark.slow
@pytest.mark.parametrize("net_name", sorted(ZOO))
def test_every_method_works_or_refuses_in_one_line(net_name, tmp_path):
    for method in methods.available():
        RESULTS[(net_name, method)] = _check_cell(net_name, ZOO[net_name], method, tmp_path)


@pytest.mark.slow
def test_unseen_networks_and_the_share_that_works(tmp_path):
    for net_name, builder in sorted(UNSEEN.items()):
        for method in methods.available():
            RESULTS[(net_name, method)] = _check_cell(net_name, builder, method, tmp_path)
    works = sum(1 for outcome in RESULTS.values() if outcome == "works")
    assert works >= math.ceil(0.75 * len(RESULTS)), sorted(k for k, v in RESULTS.items() if v != "works")
