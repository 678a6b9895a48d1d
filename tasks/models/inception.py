"""Small Inception of Zhang et al. (2017), Appendix A, Figure 3.

Conv module = conv -> BatchNorm -> ReLU; the BatchNorm learns a shift but no scale (TensorFlow's
batch_norm with scale=False), so each conv channel carries one parameter: 1,649,402 in all for
3x28x28 inputs and 10 classes. Without BatchNorm the conv carries a bias instead, same count."""

from __future__ import annotations

import torch
from torch import nn

# (kind, channels): 'inception' takes (ch1, ch3), 'downsample' takes ch3.
LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("inception", (32, 32)),
    ("inception", (32, 48)),
    ("downsample", (80,)),
    ("inception", (112, 48)),
    ("inception", (96, 64)),
    ("inception", (80, 80)),
    ("inception", (48, 96)),
    ("downsample", (96,)),
    ("inception", (176, 160)),
    ("inception", (176, 160)),
)


class ShiftBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with a learned per-channel shift (beta) and no scale (gamma)."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


def conv_module(
    cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, batch_norm: bool
) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=not batch_norm)
    norm = [ShiftBatchNorm2d(cout)] if batch_norm else []
    return nn.Sequential(conv, *norm, nn.ReLU())


class InceptionModule(nn.Module):
    """Concatenation of a 1x1 conv module (ch1) and a 3x3 'same' conv module (ch3)."""

    def __init__(self, cin: int, ch1: int, ch3: int, batch_norm: bool) -> None:
        super().__init__()
        self.branch1 = conv_module(cin, ch1, 1, batch_norm=batch_norm)
        self.branch3 = conv_module(cin, ch3, 3, padding=1, batch_norm=batch_norm)
        self.out_channels = ch1 + ch3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class DownsampleModule(nn.Module):
    """Concatenation of a 3x3 stride-2 'valid' conv module (ch3) and a 3x3 stride-2 max-pool;
    both give floor((H - 3) / 2) + 1 rows: 28 -> 13 -> 6 and 32 -> 15 -> 7."""

    def __init__(self, cin: int, ch3: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = conv_module(cin, ch3, 3, stride=2, batch_norm=batch_norm)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.out_channels = cin + ch3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class InceptionSmall(nn.Module):
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

        def scaled(n: int) -> int:
            return max(1, round(n * width))

        cin = scaled(96)
        blocks: list[nn.Module] = [conv_module(in_channels, cin, 3, padding=1, batch_norm=batch_norm)]
        for kind, channels in LAYOUT:
            if kind == "inception":
                block: nn.Module = InceptionModule(cin, *map(scaled, channels), batch_norm)
            else:
                block = DownsampleModule(cin, scaled(channels[0]), batch_norm)
            blocks.append(block)
            cin = block.out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x))))
