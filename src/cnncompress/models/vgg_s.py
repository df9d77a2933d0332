"""VGG-S (Chatfield et al. 2014), the emotion CNN of Levi & Hassner 2015 used by Rassadin & Savchenko 2017.

conv1 96x7x7/2 + LRN + maxpool 3/3; conv2 256x5x5 (pad 1) + LRN + maxpool 2/2; conv3-5 512x3x3 (pad 1) +
maxpool 3/3; fc6 4096, fc7 4096 (dropout 0.5 each), fc8 classes. Caffe-style ceil-mode pooling.
At 224x224 RGB and 8 classes: 98,844,296 parameters (fc6 = 18432x4096 holds three quarters).
``width`` scales every hidden width (channels and fc units); ``input_size`` may be as small as 48.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from cnncompress.layers import SequentialForward


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _shape_walk(features: nn.Sequential, channels: int, size: int) -> int:
    """Flattened feature count from the conv/pool arithmetic of conv/pool layers (no forward pass, so paper-size builds stay instant)."""
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            size = (size + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            if size < layer.kernel_size:
                raise ValueError("input_size too small for VGG-S (use 48 or more)")
            size = math.ceil((size - layer.kernel_size) / layer.stride) + 1
        if size < 1:
            raise ValueError("input_size too small for VGG-S (use 48 or more)")
    return channels * size * size


class VGGS(SequentialForward, nn.Module):
    def __init__(self, num_classes: int = 8, in_channels: int = 3, input_size: int = 224, width: float = 1.0):
        super().__init__()
        self.build_config = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                             "width": width}
        c1, c2, c3, fc = (_scaled(c, width) for c in (96, 256, 512, 4096))
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, c1, 7, stride=2)), ("relu1", nn.ReLU(inplace=True)),
            ("norm1", nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)),
            ("pool1", nn.MaxPool2d(3, 3, ceil_mode=True)),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=1)), ("relu2", nn.ReLU(inplace=True)),
            ("norm2", nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)),
            ("pool2", nn.MaxPool2d(2, 2, ceil_mode=True)),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(c3, c3, 3, padding=1)), ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(c3, c3, 3, padding=1)), ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, 3, ceil_mode=True)),
        ]))
        flat = _shape_walk(self.features, in_channels, input_size)
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),
            ("fc6", nn.Linear(flat, fc)), ("relu6", nn.ReLU(inplace=True)), ("drop6", nn.Dropout(0.5)),
            ("fc7", nn.Linear(fc, fc)), ("relu7", nn.ReLU(inplace=True)), ("drop7", nn.Dropout(0.5)),
            ("fc8", nn.Linear(fc, num_classes)),
        ]))
        for module in self.modules():  # Kaiming init: no BN in VGG-S, so the default init trains very slowly
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier.fc8.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
