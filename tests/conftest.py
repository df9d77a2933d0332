"""Fixtures for every test: torch threads pinned, the CLI run in-process, a tiny VGG-S and random labelled images."""
import os

import pytest
import torch

from cnncompress import models

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that pin torch's thread count must not leak it into the next test."""
    yield
    torch.set_num_threads(2)


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from cnncompress.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run

class RandomImages:
    """``n`` random images with random labels, shaped like a ``data.ImageDataset`` (``images``, ``labels``)."""

    def __init__(self, n=40, channels=1, size=48, classes=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, channels, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.labels)


@pytest.fixture(scope="session")
def random_images():
    """The ``RandomImages`` class (call it with the size you need)."""
    return RandomImages


@pytest.fixture(scope="module")
def vgg():
    """VGG-S width 0.125 at 48x48 grey, 10 classes, seed 0, eval mode (one per test module)."""
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()
