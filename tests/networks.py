"""Networks the tests build: a user's model file with branches and a residual add (its source, as a
user writes it), and batch norms given non-trivial statistics."""

import torch
from torch import nn

USER_MODEL = '''
import torch
from torch import nn


class Branchy(nn.Module):
    """Two branches concatenated, a residual add, functional activations."""

    def __init__(self, num_classes=10, in_channels=3, width=8):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(width)
        self.left = nn.Conv2d(width, width, 3, padding=1)
        self.right = nn.Conv2d(width, width, 1)
        self.mix = nn.Conv2d(2 * width, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        both = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        x = x + self.mix(both)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def not_a_module():
    return 42
'''


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch norm statistics and affine parameters (a zero would come out as a bias)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval()
