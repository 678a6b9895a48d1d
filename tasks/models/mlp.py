"""Multilayer perceptrons of Zhang et al. (2017), Appendix A: flatten, then hidden layers of 512
ReLU units (one for mlp1x512, three for mlp3x512), then a linear classifier."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """flatten -> [Linear -> (BatchNorm1d) -> ReLU -> (Dropout)] per hidden layer -> Linear."""

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        num_classes: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for units in hidden:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
