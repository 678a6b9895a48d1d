"""The models: Zhang et al.'s exact parameter counts, shapes on 28/32-pixel inputs and any class
count, and the width / init_scale / dropout / batch_norm knobs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rethink.errors import SpecError
from rethink.tasks.models import DEFAULT_BATCH_NORM, build_model
from rethink.tasks.spec import MODELS

ZHANG_SHAPE = (3, 28, 28)

# Zhang et al. (2017), Table 1 / Appendix A, for 3x28x28 inputs and 10 classes.
ZHANG_PARAMS = {
    "mlp1x512": 1_209_866,
    "mlp3x512": 1_735_178,
    "alexnet_small": 1_387_786,
    "inception_small": 1_649_402,
}
RESNET18_PARAMS = 11_173_962  # CIFAR ResNet-18, 10 classes, any input size

# Hidden ReLU modules each model must own, one per hidden activation.
RELU_COUNTS = {
    "mlp1x512": 1,
    "mlp3x512": 3,
    "alexnet_small": 4,  # two conv modules, two hidden FC layers
    "inception_small": 19,  # stem + 8 inception modules x 2 branches + 2 downsample convs
    "resnet18": 17,  # stem + 8 blocks x 2
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, shape: tuple[int, int, int] = ZHANG_SHAPE, classes: int = 10, **kw) -> nn.Module:
    return build_model(name, in_shape=shape, num_classes=classes, **kw)


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# ---- parameter counts -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ZHANG_PARAMS))
def test_zhang_parameter_counts_are_exact(name: str) -> None:
    assert n_params(build(name)) == ZHANG_PARAMS[name]


def test_resnet18_parameter_count() -> None:
    assert n_params(build("resnet18")) == RESNET18_PARAMS
    assert n_params(build("resnet18", (3, 32, 32))) == RESNET18_PARAMS


def test_inception_without_batch_norm_keeps_the_count_with_conv_biases() -> None:
    model = build("inception_small", batch_norm=False)
    assert n_params(model) == ZHANG_PARAMS["inception_small"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    with_bn = build("inception_small", batch_norm=True)
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))


def test_parameter_count_follows_num_classes() -> None:
    # only the classifier grows: (100 - 10) more rows of fan-in + 1 bias each
    assert n_params(build("mlp1x512", classes=100)) - ZHANG_PARAMS["mlp1x512"] == 90 * 513
    assert n_params(build("inception_small", classes=100)) - ZHANG_PARAMS["inception_small"] == 90 * 337
    assert n_params(build("resnet18", classes=100)) - RESNET18_PARAMS == 90 * 513


# ---- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("classes", [10, 100])
def test_output_is_logits_per_class(name: str, shape: tuple[int, int, int], classes: int) -> None:
    model = build(name, shape, classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mlp_input_layer_matches_the_image_size() -> None:
    first = next(m for m in build("mlp1x512", (3, 32, 32)).modules() if isinstance(m, nn.Linear))
    assert first.in_features == 3 * 32 * 32


# ---- width -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_width_scales_the_parameter_count(name: str) -> None:
    half, one, double = (n_params(build(name, width=w)) for w in (0.5, 1.0, 2.0))
    assert half < one < double


def test_width_scales_hidden_units_exactly() -> None:
    # hidden 256: 2352*256 + 256 + 256*10 + 10
    assert n_params(build("mlp1x512", width=0.5)) == 2352 * 256 + 256 + 2560 + 10
    widths = [m.out_channels for m in build("resnet18", width=0.5).modules() if isinstance(m, nn.Conv2d)]
    assert max(widths) == 256 and min(widths) == 32


@pytest.mark.parametrize("name", MODELS)
def test_tiny_width_keeps_at_least_one_unit(name: str) -> None:
    model = build(name, width=1e-4).eval()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert m.out_features >= 1
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 1
    with torch.no_grad():
        assert model(torch.randn(2, *ZHANG_SHAPE)).shape == (2, 10)


# ---- init_scale --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_init_scale_multiplies_weights_only(name: str) -> None:
    torch.manual_seed(0)
    base = build(name)
    torch.manual_seed(0)
    scaled = build(name, init_scale=2.0)
    weights = {
        f"{prefix}.weight"
        for prefix, m in base.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    scaled_params = dict(scaled.named_parameters())
    n_weights = 0
    for key, value in base.named_parameters():
        if key in weights:
            n_weights += 1
            torch.testing.assert_close(scaled_params[key], 2.0 * value)
            assert scaled_params[key].norm().item() == pytest.approx(2.0 * value.norm().item(), rel=1e-5)
        else:  # biases and BatchNorm shifts/scales
            torch.testing.assert_close(scaled_params[key], value, rtol=0, atol=0)
    assert n_weights == len(weights) > 0
    assert n_weights < len(scaled_params)  # biases or BatchNorm parameters were checked too


def test_init_scale_leaves_batch_norm_untouched() -> None:
    torch.manual_seed(0)
    model = build("resnet18", init_scale=3.0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))


# ---- dropout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_dropout_adds_no_parameters_and_no_module_at_zero(name: str) -> None:
    plain, dropped = build(name), build(name, dropout=0.5)
    assert n_params(dropped) == n_params(plain)
    assert count(plain, nn.Dropout) == 0
    expected = {"mlp1x512": 1, "mlp3x512": 3, "alexnet_small": 2}.get(name, 1)
    assert count(dropped, nn.Dropout) == expected
    assert all(m.p == 0.5 for m in dropped.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("name", MODELS)
def test_dropout_acts_only_in_train_mode(name: str) -> None:
    torch.manual_seed(0)
    plain = build(name).eval()
    torch.manual_seed(0)
    dropped = build(name, dropout=0.5).eval()
    x = torch.randn(4, *ZHANG_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))  # same init, dropout inactive
        dropped.train()
        torch.manual_seed(1)
        first = dropped(x)
        torch.manual_seed(2)
        second = dropped(x)
    assert not torch.allclose(first, second)


def test_mlp_dropout_follows_each_hidden_relu() -> None:
    layers = list(build("mlp3x512", dropout=0.3).features)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Dropout):
            assert isinstance(layers[i - 1], nn.ReLU)
    assert sum(isinstance(layer, nn.Dropout) for layer in layers) == 3


# ---- batch_norm --------------------------------------------------------------------------------


def test_default_batch_norm_covers_every_model() -> None:
    assert set(DEFAULT_BATCH_NORM) == set(MODELS)
    assert DEFAULT_BATCH_NORM["inception_small"] and DEFAULT_BATCH_NORM["resnet18"]
    assert not DEFAULT_BATCH_NORM["mlp1x512"] and not DEFAULT_BATCH_NORM["alexnet_small"]


@pytest.mark.parametrize("name", MODELS)
def test_batch_norm_toggle(name: str) -> None:
    norm = nn.modules.batchnorm._BatchNorm
    on, off, default = build(name, batch_norm=True), build(name, batch_norm=False), build(name)
    assert count(on, norm) > 0
    assert count(off, norm) == 0
    assert count(default, norm) == (count(on, norm) if DEFAULT_BATCH_NORM[name] else 0)
    model = on.train()
    out = model(torch.randn(4, *ZHANG_SHAPE))  # a batch > 1 so BatchNorm can normalize
    assert out.shape == (4, 10)


def test_mlp_batch_norm_sits_between_linear_and_relu() -> None:
    layers = list(build("mlp1x512", batch_norm=True).features)
    kinds = [type(layer) for layer in layers]
    assert kinds == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU]


def test_resnet_without_batch_norm_uses_conv_biases() -> None:
    convs = [m for m in build("resnet18", batch_norm=False).modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)


# ---- ReLU modules ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RELU_COUNTS))  # ioc_mlp uses ELU: no ReLU to count
def test_each_hidden_activation_is_its_own_relu_module(name: str) -> None:
    model = build(name).eval()
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == RELU_COUNTS[name]
    assert len({id(m) for m in relus}) == len(relus)  # no instance reused
    calls: dict[int, int] = {}
    for m in relus:
        m.register_forward_hook(lambda mod, _i, _o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
    with torch.no_grad():
        model(torch.randn(2, *ZHANG_SHAPE))
    assert calls == {id(m): 1 for m in relus}  # every ReLU module runs once per forward


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_a_spec_error_listing_valid_names() -> None:
    with pytest.raises(SpecError, match="unknown model 'vgg16'") as info:
        build("vgg16")
    for name in MODELS:
        assert name in str(info.value)
