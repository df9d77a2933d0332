"""DenseNet style network: dense blocks whose layers (BN-ReLU-conv1x1 bottleneck, BN-ReLU-conv3x3) each see the
``torch.cat`` of all earlier feature maps, joined by transitions (BN-ReLU-conv1x1-avgpool).

Exercises: pre-activation BN (BN before the conv, on a concatenation), channel concatenation that grows the
width layer by layer, so every conv's input channels come from several producers.
"""
import torch
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, in_channels, growth, bottleneck=4):
        super().__init__()
        inner = growth * bottleneck
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers, in_channels, growth):
        super().__init__()
        for index in range(layers):
            self[f"denselayer{index + 1}"] = DenseLayer(in_channels + index * growth, growth)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, growth=12, block_layers=(3, 3, 3), stem=24):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False))  # 24
        channels = stem
        for index, layers in enumerate(block_layers):
            self.features.add_module(f"denseblock{index + 1}", DenseBlock(layers, channels, growth))
            channels += layers * growth
            if index != len(block_layers) - 1:
                self.features.add_module(f"transition{index + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build(num_classes=10, in_channels=1):
    return DenseNet(num_classes, in_channels)
