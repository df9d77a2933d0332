"""A net written the way many users write one: layers as attributes, and a forward made of ``torch.nn.functional``
calls (``F.relu``, ``F.max_pool2d``, ``F.adaptive_avg_pool2d``, ``F.dropout``), ``torch.cat`` of two parallel
branches and ``torch.flatten``. No ``nn.Sequential``, no activation or pooling modules.

Exercises: a model whose structure is only in ``forward`` (module order says nothing about data flow), a
two-branch concatenation, conv layers with bias and no BatchNorm.
"""
import torch
import torch.nn.functional as F
from torch import nn


class FunctionalNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.branch_a = nn.Conv2d(16, 16, 3, padding=1)
        self.branch_b = nn.Conv2d(16, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 48, 3, padding=1)
        self.conv3 = nn.Conv2d(48, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 3 * 3, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)                      # 48 -> 24
        x = torch.cat([F.relu(self.branch_a(x)), F.relu(self.branch_b(x))], dim=1)
        x = F.max_pool2d(x, 2)                                           # 24 -> 12
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)                      # 12 -> 6
        x = F.relu(self.conv3(x))
        x = F.adaptive_avg_pool2d(x, 3)                                  # -> 3x3
        x = torch.flatten(x, 1)
        x = F.dropout(F.relu(self.fc1(x)), p=0.1, training=self.training)
        return self.fc2(x)


def build(num_classes=10, in_channels=1):
    return FunctionalNet(num_classes, in_channels)
