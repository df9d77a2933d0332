"""Held-out nets (``UNSEEN``), kept apart from ``ZOO`` so that a fix developed against the zoo can be checked on
structures it was not tuned on.

* ``resnext``: ResNeXt-style bottleneck blocks whose 3x3 conv is grouped (cardinality 4, ``groups`` neither 1 nor
  the channel count), residual adds with 1x1 projection shortcuts, BN everywhere.
* ``inception_res``: Inception-ResNet-ish blocks: four parallel branches (1x1; 1x1-3x3; 1x1-3x3-3x3; 3x3 max pool
  - 1x1) concatenated with ``torch.cat``, a 1x1 projection of the concatenation, then a residual add of the block
  input; a ``nn.ELU`` activation and a ``nn.MaxPool2d`` inside a branch.
"""
import torch
from torch import nn


class ResNeXtBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1, cardinality=4, bottleneck_width=4):
        super().__init__()
        inner = cardinality * bottleneck_width
        self.conv_reduce = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_grouped = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn_grouped = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn_grouped(self.conv_grouped(out)))
        out = self.bn_expand(self.conv_expand(out))
        return self.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))  # 48 -> 24
        self.stages = nn.Sequential(ResNeXtBlock(16, 32, 1, bottleneck_width=4),
                                    ResNeXtBlock(32, 64, 2, bottleneck_width=8),
                                    ResNeXtBlock(64, 128, 2, bottleneck_width=16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


class InceptionResBlock(nn.Module):
    def __init__(self, channels, branch=8):
        super().__init__()
        self.b1 = nn.Conv2d(channels, branch, 1)
        self.b2 = nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ELU(), nn.Conv2d(branch, branch, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ELU(), nn.Conv2d(branch, branch, 3, padding=1),
                                nn.ELU(), nn.Conv2d(branch, branch, 3, padding=1))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(channels, branch, 1))
        self.project = nn.Conv2d(4 * branch, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ELU()

    def forward(self, x):
        mixed = torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)
        return self.act(x + self.bn(self.project(mixed)))


class InceptionRes(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ELU())  # 48 -> 24
        self.block1 = InceptionResBlock(32)
        self.reduce = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ELU())  # 24 -> 12
        self.block2 = InceptionResBlock(64, branch=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.block2(self.reduce(self.block1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def build_resnext(num_classes=10, in_channels=1):
    return ResNeXt(num_classes, in_channels)


def build_inception_res(num_classes=10, in_channels=1):
    return InceptionRes(num_classes, in_channels)


UNSEEN = {"resnext": build_resnext, "inception_res": build_inception_res}
