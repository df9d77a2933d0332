"""MobileNetV2 style network: inverted residual blocks (1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6,
1x1 linear projection + BN with no activation), residual add when stride is 1 and widths match.

Exercises: ``nn.ReLU6`` (not ``nn.ReLU``), depthwise convolutions (``groups == channels``), a linear bottleneck
(a BN output added to the block input with no activation), blocks built as ``nn.Sequential`` inside a custom
module whose forward adds.
"""
from torch import nn


def conv_bn(in_channels, out_channels, kernel=3, stride=1, groups=1, activation=True):
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels, out_channels, stride, expand_ratio):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = []
        if expand_ratio != 1:
            layers.append(conv_bn(in_channels, hidden, kernel=1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                   conv_bn(hidden, out_channels, kernel=1, activation=False)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expand ratio t, output channels c, repeats n, first stride s), MobileNetV2's table shrunk for 48x48 digits
SETTINGS = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 2, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, last_channels=128):
        super().__init__()
        channels = 16
        blocks = [conv_bn(in_channels, channels, 3, stride=2)]  # 48 -> 24
        for t, c, n, s in SETTINGS:
            for index in range(n):
                blocks.append(InvertedResidual(channels, c, s if index == 0 else 1, t))
                channels = c
        blocks.append(conv_bn(channels, last_channels, kernel=1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(last_channels, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build(num_classes=10, in_channels=1):
    return MobileNetV2(num_classes, in_channels)
