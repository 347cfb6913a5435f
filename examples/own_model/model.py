"""A network of your own, as knockout takes it: a callable that returns an `nn.Module`.

Nothing here knows about knockout. knockout traces the network (torch.fx), finds its units (the
output channels of every conv, the features of every linear layer), their silence points (the
batch norm after a conv) and where it can be cut (inside the residual blocks too), and fills in
`num_classes` and `in_channels` from the dataset because the constructor takes them.
"""

import torch
from torch import nn


class Block(nn.Module):
    """Two 3x3 convolutions with batch norm, two paths concatenated, a residual add."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels // 2)
        self.side = nn.Conv2d(channels, channels // 2, 1, bias=False)  # a 1x1 path beside conv2

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.cat([self.bn2(self.conv2(y)), self.side(y)], dim=1)
        return torch.relu(x + y)


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.block1 = Block(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.block2 = Block(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.block1(x)
        x = torch.relu(self.down_bn(self.down(x)))
        x = self.block2(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
