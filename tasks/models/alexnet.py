"""Small AlexNet of Zhang et al. (2017), Appendix A, after the TensorFlow CIFAR-10 tutorial: two
modules of 5x5 conv -> ReLU -> 3x3 max-pool (stride 2) -> local response normalization, then
fully connected layers of 384 and 192 ReLU units and a linear classifier."""

from __future__ import annotations

import torch
from torch import nn


def _conv_module(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2)]  # 'same'
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    # TF's depth_radius=4, alpha=0.001/9; PyTorch divides alpha by size, hence 0.001.
    lrn = nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)
    layers += [nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), lrn]  # padding=1: 28->14->7
    return layers


def _dense(fin: int, fout: int, dropout: float, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(fin, fout)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(fout))
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


class AlexNetSmall(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        *,
        channels: int = 64,
        hidden: tuple[int, int] = (384, 192),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.features = nn.Sequential(
            *_conv_module(c, channels, batch_norm), *_conv_module(channels, channels, batch_norm)
        )
        for _ in range(2):  # each pool: kernel 3, stride 2, padding 1
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            *_dense(channels * h * w, hidden[0], dropout, batch_norm),
            *_dense(hidden[0], hidden[1], dropout, batch_norm),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
