"""SqueezeNet 1.1 (Iandola et al. 2016): fire modules, no FC layers; classifier = dropout, 1x1 conv, ReLU,
global average pool. 726,600 parameters at 3 input channels and 8 classes. ``width`` scales every channel count.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnncompress.layers import BranchConcat, SequentialForward


class Fire(BranchConcat, nn.Module):
    """squeeze 1x1 -> ReLU -> [expand 1x1 | expand 3x3] -> ReLU, concatenated on channels."""

    stages = (("squeeze",), ("expand1x1", "expand3x3"))

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.build_config = {"in_channels": in_channels, "squeeze": squeeze, "expand1x1": expand1x1,
                             "expand3x3": expand3x3}
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_relu = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_relu = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_relu = nn.ReLU(inplace=True)

    def channels_changed(self) -> None:
        """Filter pruning narrowed the convs: the constructor kwargs follow them."""
        self.build_config = {"in_channels": self.squeeze.in_channels, "squeeze": self.squeeze.out_channels,
                             "expand1x1": self.expand1x1.out_channels, "expand3x3": self.expand3x3.out_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_relu(self.squeeze(x))
        return torch.cat([self.expand1x1_relu(self.expand1x1(x)), self.expand3x3_relu(self.expand3x3(x))], 1)


FINAL_BIAS = 0.5
"""Our one deviation from the reference init: the final conv's bias starts at 0.5, so the ReLU before the global
pooling is alive for every class at the start (with a zero bias, from scratch on 3,600 digits, classes whose
outputs went negative everywhere stayed dead: loss stuck near ln C)."""
FIRE_CONFIG = [(16, 64), (16, 64), "pool", (32, 128), (32, 128), "pool", (48, 192), (48, 192), (64, 256), (64, 256)]


def init_weights(model: nn.Module) -> None:
    """He et al. 2015 for the ReLU convs (normal, std sqrt(2 / fan_in): keeps the activations' scale through the 18
    BN-free conv layers), zero biases; the final conv N(0, 0.01) as in the SqueezeNet reference (Iandola 2016),
    with a ``FINAL_BIAS`` bias (below)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    final = model.classifier.conv10
    nn.init.normal_(final.weight, 0.0, 0.01)
    nn.init.constant_(final.bias, FINAL_BIAS)


class SqueezeNet11(SequentialForward, nn.Module):
    def __init__(self, num_classes: int = 8, in_channels: int = 3, input_size: int = 224, width: float = 1.0):
        super().__init__()
        self.build_config = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                             "width": width}
        def scaled(c):
            return max(1, int(round(c * width)))
        stem = scaled(64)
        layers = [("conv1", nn.Conv2d(in_channels, stem, 3, stride=2)), ("relu1", nn.ReLU(inplace=True)),
                  ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True))]
        channels, fire_index, pool_index = stem, 2, 3
        for item in FIRE_CONFIG:
            if item == "pool":
                layers.append((f"pool{pool_index}", nn.MaxPool2d(3, 2, ceil_mode=True)))
                pool_index += 2
                continue
            squeeze, expand = scaled(item[0]), scaled(item[1])
            layers.append((f"fire{fire_index}", Fire(channels, squeeze, expand, expand)))
            channels, fire_index = 2 * expand, fire_index + 1
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(OrderedDict([
            ("dropout", nn.Dropout(0.5)), ("conv10", nn.Conv2d(channels, num_classes, 1)),
            ("relu10", nn.ReLU(inplace=True)), ("pool10", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
        ]))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
