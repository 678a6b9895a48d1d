"""Input-output convex MLP (IOC-MLP; Sivaprasad et al., "The Curious Case of Convex Neural
Networks", 2021): every logit is a convex function of the input image.

flatten -> Linear -> (BatchNorm1d) -> ELU -> [PositiveLinear -> (ShiftBatchNorm1d) -> ELU] x (depth - 1)
        -> (Dropout) -> PositiveLinear classifier.

Why convex: the first layer is affine (any sign); ELU is convex and non-decreasing, so ELU of a
convex function is convex; a PositiveLinear is a non-negative combination plus a bias, which keeps
convexity; so each hidden unit, and each logit, is convex in the input. In eval mode a BatchNorm
is a per-unit affine map with scale gamma / sigma: after the first layer any sign is fine, after
a PositiveLinear the scale must stay >= 0, so those BatchNorms learn a shift and no scale.
Dropout multiplies by a non-negative mask, which keeps convexity; there is one, on the last
hidden layer, before the classifier.

Two hidden layers by default (DEPTH), 512 units each times `width`. The activations are nn.ELU
modules, never exactly zero: the activation-sparsity probe counts nn.ReLU modules only, so for this
model it is None.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEPTH = 2  # hidden layers: one unconstrained, then DEPTH - 1 with non-negative weights
ELU_MEAN = 0.1603  # E[ELU(z)] for z ~ N(0, 1): the mean a PositiveLinear's bias cancels at init
LOG_SPREAD = 1.0  # standard deviation of log W at init (weights log-normal)


class PositiveLinear(nn.Module):
    """y = x W^T + b with W = scale * exp(raw): positive for any value of the free parameter `raw`,
    so plain SGD (or any optimizer) keeps it so, with nn.Linear's parameter count.

    `scale` is the init-scale multiplier (Mehta et al.): W starts `scale` times larger, and since
    exp(raw + log scale) = scale * exp(raw), that is exactly the same as shifting the initial raw
    by log(scale) (gradients with respect to raw included; only weight decay, which pulls raw
    toward 0, tells them apart). It is a fixed attribute, not a parameter or a buffer.

    Init (at scale 1): log W ~ N(mu, LOG_SPREAD^2) with E[W^2] = 1 / fan_in, so a unit's input
    sum has about the variance of its inputs; the bias starts at -ELU_MEAN * sum_i W_ji, cancelling
    the mean of ELU outputs of roughly standard normal inputs (all-positive weights otherwise add
    the inputs' mean up into a common offset). As in every model, init_scale leaves biases alone.
    This init is rethink's own choice, not the paper's. On 5,000 whitened 28x28 CIFAR-10 images (lr 0.01, momentum 0.9, batch 128) this trains to
    0.62 train / 0.42 test accuracy in 10 epochs, where mlp1x512 reaches 0.87 / 0.43."""

    def __init__(self, in_features: int, out_features: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.log_scale = math.log(scale)
        self.raw = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        mu = -0.5 * math.log(self.in_features) - LOG_SPREAD**2
        with torch.no_grad():
            self.raw.normal_(mu, LOG_SPREAD)
            self.bias.copy_(-ELU_MEAN * self.raw.exp().sum(dim=1))  # before init_scale, like every bias

    @property
    def weight(self) -> torch.Tensor:
        return torch.exp(self.raw + self.log_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        scale = math.exp(self.log_scale)
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={scale:g}"


class ShiftBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with a learned per-unit shift and no scale, so its eval-mode map is increasing."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class IOCMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        num_classes: int,
        *,
        init_scale: float = 1.0,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, units in enumerate(hidden):
            if i == 0:  # unconstrained; build_model scales its weight like any nn.Linear
                layers.append(nn.Linear(width, units))
                norm: nn.Module = nn.BatchNorm1d(units)
            else:
                layers.append(PositiveLinear(width, units, scale=init_scale))
                norm = ShiftBatchNorm1d(units)
            if batch_norm:
                layers.append(norm)
            layers.append(nn.ELU())
            width = units
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.classifier = PositiveLinear(width, num_classes, scale=init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
