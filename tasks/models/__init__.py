"""The networks of the randomization tests, built from a model name. Each takes float images
(N, C, H, W) and returns logits (N, num_classes); every hidden activation is its own nn.ReLU
module, so forward hooks can read each layer."""

from __future__ import annotations

import torch
from torch import nn

from rethink.errors import SpecError
from rethink.tasks.models.alexnet import AlexNetSmall
from rethink.tasks.models.inception import InceptionSmall
from rethink.tasks.models.ioc import DEPTH as IOC_DEPTH
from rethink.tasks.models.ioc import IOCMLP
from rethink.tasks.models.mlp import MLP
from rethink.tasks.models.resnet import ResNet18
from rethink.tasks.spec import DEFAULT_BATCH_NORM, MODELS

__all__ = ["DEFAULT_BATCH_NORM", "build_model"]

def build_model(
    name: str,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: float = 1.0,
    init_scale: float = 1.0,
    dropout: float = 0.0,
    batch_norm: bool | None = None,
) -> nn.Module:
    """A freshly initialized model; `width` multiplies hidden units and channels, `init_scale`
    every Linear/Conv weight after PyTorch's default init (Mehta et al.), `dropout` is the drop
    probability on hidden fully connected layers (before the classifier for inception/resnet and
    ioc_mlp). For ioc_mlp, init_scale multiplies the first layer's weight and the initial positive
    weights of the others (see models/ioc.py)."""
    if name not in DEFAULT_BATCH_NORM:
        raise SpecError(f"unknown model '{name}'; valid: {', '.join(MODELS)}")
    bn = DEFAULT_BATCH_NORM[name] if batch_norm is None else batch_norm

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    c, h, w = in_shape
    model: nn.Module
    if name in ("mlp1x512", "mlp3x512"):
        hidden = (scaled(512),) * (1 if name == "mlp1x512" else 3)
        model = MLP(c * h * w, hidden, num_classes, dropout=dropout, batch_norm=bn)
    elif name == "alexnet_small":
        model = AlexNetSmall(
            in_shape, num_classes, channels=scaled(64), hidden=(scaled(384), scaled(192)),
            dropout=dropout, batch_norm=bn,
        )
    elif name == "ioc_mlp":
        model = IOCMLP(c * h * w, (scaled(512),) * IOC_DEPTH, num_classes, init_scale=init_scale,
                       dropout=dropout, batch_norm=bn)
    elif name == "inception_small":
        model = InceptionSmall(c, num_classes, width=width, dropout=dropout, batch_norm=bn)
    else:
        model = ResNet18(c, num_classes, width=width, dropout=dropout, batch_norm=bn)
    if init_scale != 1.0:
        _scale_weights(model, init_scale)
    return model


def _scale_weights(model: nn.Module, factor: float) -> None:
    """Multiply every Linear and Conv weight in place; biases and BatchNorm stay as initialized."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(factor)
