"""ResNet-18, CIFAR variant of He et al. (2016) as popularized by kuangliu/pytorch-cifar: a 3x3
stem conv with no max-pool, four stages of two BasicBlocks (64-128-256-512 channels, stages 2-4
halve the resolution), global average pool, linear classifier. Without BatchNorm the convs carry
biases instead."""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv3x3(cin: int, cout: int, stride: int, batch_norm: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, batch_norm)
        self.bn1 = _norm(cout, batch_norm)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout, 1, batch_norm)
        self.bn2 = _norm(cout, batch_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            projection = nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm)
            self.shortcut = nn.Sequential(projection, _norm(cout, batch_norm))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width: float = 1.0,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            _conv3x3(in_channels, widths[0], 1, batch_norm), _norm(widths[0], batch_norm), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            first_stride = 1 if stage == 0 else 2
            blocks += [BasicBlock(cin, cout, first_stride, batch_norm), BasicBlock(cout, cout, 1, batch_norm)]
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(self.stem(x)))))
