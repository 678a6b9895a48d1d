"""ioc_mlp: every logit convex in the input (checked along random lines, before and after
training), positive weights that SGD cannot make negative, a plain MLP's parameter count, and the
width / init_scale / dropout / batch_norm knobs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rethink.tasks.models import build_model
from rethink.tasks.models.ioc import PositiveLinear, ShiftBatchNorm1d
from rethink.tasks.models.mlp import MLP

SHAPE = (3, 28, 28)
SMALL = (3, 6, 6)
# (3,28,28), 10 classes: 2352*512 + 512 (first layer) + 512*512 + 512 + 512*10 + 10
IOC_PARAMS = 1_472_522


def build(shape=SMALL, classes: int = 10, **kw) -> nn.Module:
    return build_model("ioc_mlp", in_shape=shape, num_classes=classes, **kw)


def convexity_gap(model: nn.Module, shape, pairs: int = 400, seed: int = 0) -> torch.Tensor:
    """max over random segments [a, b], points t on them and logits of
    f(t a + (1 - t) b) - (t f(a) + (1 - t) f(b)); <= 0 (up to rounding) for a convex f."""
    g = torch.Generator().manual_seed(seed)
    a = 2 * torch.randn(pairs, *shape, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(pairs, *shape, generator=g, dtype=torch.float64)
    model = model.double().eval()
    worst = torch.tensor(-float("inf"), dtype=torch.float64)
    with torch.no_grad():
        fa, fb = model(a), model(b)
        for t in (0.5, 0.1, 0.3, 0.7, 0.9):
            gap = model(t * a + (1 - t) * b) - (t * fa + (1 - t) * fb)
            worst = torch.maximum(worst, (gap / (1 + fa.abs() + fb.abs())).max())
    return worst


def sgd_steps(model: nn.Module, shape, steps: int = 30, lr: float = 0.5, weight_decay: float = 5e-4) -> None:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(32, *shape), torch.randint(0, 10, (32,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def positive_layers(model: nn.Module) -> list[PositiveLinear]:
    return [m for m in model.modules() if isinstance(m, PositiveLinear)]


# ---- convexity and positivity -------------------------------------------------------------------


def test_every_logit_is_convex_along_random_lines_at_init():
    torch.manual_seed(0)
    assert convexity_gap(build(), SMALL) <= 1e-12


def test_a_plain_mlp_fails_the_same_check():
    torch.manual_seed(0)
    assert convexity_gap(build_model("mlp1x512", in_shape=SMALL, num_classes=10), SMALL) > 1e-3


@pytest.mark.parametrize("batch_norm", [False, True])
def test_weights_stay_positive_and_logits_convex_after_sgd(batch_norm: bool):
    torch.manual_seed(0)
    model = build(batch_norm=batch_norm, dropout=0.2)
    before = [layer.raw.detach().clone() for layer in positive_layers(model)]
    sgd_steps(model, SMALL)
    assert any(not torch.equal(layer.raw, b) for layer, b in zip(positive_layers(model), before))
    for layer in positive_layers(model):
        assert bool((layer.weight > 0).all()) and torch.isfinite(layer.weight).all()
    if batch_norm:  # eval mode uses the running statistics SGD moved
        assert any(not torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
                   for m in model.modules() if isinstance(m, ShiftBatchNorm1d))
    assert convexity_gap(model, SMALL) <= 1e-12


def test_every_layer_after_the_first_is_positive_and_activations_are_elu():
    model = build(SHAPE)
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, PositiveLinear))]
    assert [type(m) for m in linears] == [nn.Linear, PositiveLinear, PositiveLinear]  # two hidden layers
    assert sum(isinstance(m, nn.ELU) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


# ---- parameter count and knobs --------------------------------------------------------------------


def test_parameter_count_is_a_plain_two_layer_mlps():
    count = sum(p.numel() for p in build(SHAPE).parameters())
    assert count == IOC_PARAMS == 2352 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert count == sum(p.numel() for p in MLP(2352, (512, 512), 10).parameters())
    assert sum(p.numel() for p in build(SHAPE, classes=100).parameters()) - IOC_PARAMS == 90 * 513


def test_width_scales_every_hidden_layer():
    linears = [m for m in build(SHAPE, width=0.25).modules() if isinstance(m, (nn.Linear, PositiveLinear))]
    assert [m.out_features for m in linears] == [128, 128, 10]


def test_init_scale_multiplies_the_effective_weights_and_leaves_biases():
    torch.manual_seed(0)
    base = build()
    torch.manual_seed(0)
    scaled = build(init_scale=3.0)
    first_base, first_scaled = base.features[1], scaled.features[1]
    torch.testing.assert_close(first_scaled.weight, 3.0 * first_base.weight)
    for lb, ls in zip(positive_layers(base), positive_layers(scaled)):
        torch.testing.assert_close(ls.weight, 3.0 * lb.weight)
        assert torch.equal(ls.raw, lb.raw) and torch.equal(ls.bias, lb.bias)
    assert convexity_gap(scaled, SMALL) <= 1e-12


def test_dropout_and_batch_norm_options():
    plain = build()
    assert not any(isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)) for m in plain.modules())
    dropped = build(dropout=0.5)
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.5]
    normed = build(batch_norm=True)
    norms = [m for m in normed.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [type(m) for m in norms] == [nn.BatchNorm1d, ShiftBatchNorm1d]
    assert norms[1].weight is None and norms[1].bias is not None  # a shift, no scale
    extra = sum(p.numel() for p in normed.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 512 + 512  # scale and shift after the first layer, a shift after the second
