"""Cascade CNN of Pimpley & Indulkar (Fig. 2), an AlexNet-like network for 28x28 digits.

Blocks [conv5x5/1 (pad 2) -> BN -> dropout -> maxpool 2 -> ReLU] x3 (32, 64, 128 channels x width), then
[FC 256 -> BN -> ReLU], [FC classes] (softmax is applied by the loss). Exit positions: ``p1`` after block 1,
``p2`` after block 2; the early-exit module attaches its heads there.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

BLOCK_CHANNELS = (32, 64, 128)
EXIT_POSITIONS = {"p1": "block1", "p2": "block2"}


def conv_block(in_channels: int, out_channels: int, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2)),
        ("bn", nn.BatchNorm2d(out_channels)), ("dropout", nn.Dropout(dropout)),
        ("pool", nn.MaxPool2d(2, 2)), ("relu", nn.ReLU(inplace=True)),
    ]))


class CascadeCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: float = 1.0):
        super().__init__()
        self.build_config = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                             "width": width}
        channels = [max(1, int(round(c * width))) for c in BLOCK_CHANNELS]
        blocks, previous, size = [], in_channels, input_size
        for index, out in enumerate(channels, start=1):
            blocks.append((f"block{index}", conv_block(previous, out)))
            previous, size = out, size // 2
        if size < 1:
            raise ValueError("input_size too small for the cascade CNN (use 8 or more)")
        self.features = nn.Sequential(OrderedDict(blocks))
        hidden = max(1, int(round(256 * width)))
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(previous * size * size, hidden)),
            ("bn", nn.BatchNorm1d(hidden)), ("relu", nn.ReLU(inplace=True)), ("fc2", nn.Linear(hidden, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
