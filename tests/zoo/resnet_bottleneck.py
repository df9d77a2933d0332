"""ResNet-50 style network: Bottleneck blocks (1x1 reduce - 3x3 - 1x1 expand x4, each with BN) with residual adds
and a 1x1 conv + BN projection shortcut on the first block of every stage.

Exercises: 1x1 convolutions that shrink and grow the channel count inside a residual block, stride on the 3x3
(torchvision v1.5 placement), a projection shortcut even where the stride is 1 (width change only).
"""
from torch import nn

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBottleneck(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, widths=(8, 16, 32), blocks=(2, 2, 2)):
        super().__init__()
        stem = 16
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False)  # 48 -> 24
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        channels, stages = stem, []
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            layer = [Bottleneck(channels, width, stride)]
            channels = width * EXPANSION
            layer += [Bottleneck(channels, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def build(num_classes=10, in_channels=1):
    return ResNetBottleneck(num_classes, in_channels)
