"""SE-ResNet style network: residual blocks whose output is rescaled per channel by a squeeze-and-excitation
gate (global average pool -> Linear -> ReLU -> Linear -> Sigmoid) before the residual add.

Exercises: ``nn.Sigmoid``, Linear layers inside the conv trunk (not only the classifier head), a broadcasting
elementwise multiply of a feature map by a per-channel vector, a residual add after it.
"""
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        n, c = x.shape[:2]
        scale = self.gate(self.fc2(self.relu(self.fc1(self.pool(x).flatten(1)))))
        return x * scale.view(n, c, 1, 1)


class SEBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class SENet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),  # 48 -> 24
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, channels = [], widths[0]
        for index, width in enumerate(widths):
            blocks.append(SEBlock(channels, width, 1 if index == 0 else 2))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def build(num_classes=10, in_channels=1):
    return SENet(num_classes, in_channels)
