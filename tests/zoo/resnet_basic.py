"""ResNet-18 style network: BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN) with residual adds, and a 1x1 conv + BN
downsample shortcut where the stride or the width changes.

Exercises: BatchNorm after every conv, an elementwise ``+`` joining two branches (the block's forward is not a
chain), a shortcut conv whose output channels must match the main branch's.
"""
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetBasic(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, widths=(16, 32, 64), blocks=2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)  # 48 -> 24
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layer = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def build(num_classes=10, in_channels=1):
    return ResNetBasic(num_classes, in_channels)
