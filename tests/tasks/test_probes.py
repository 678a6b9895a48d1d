"""The probes against brute-force references on tiny networks, in float64: finite differences for
the input Jacobian, a dense parameter Jacobian and its SVD for the functional dimension, a
per-point autograd loop for grad_sqnorm, hand-computed ReLU outputs and forward hooks for
sparsity. Then: probes leave the model and every RNG as they were, and in the training loop they
fill every probe_every-th row without changing the others."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from rethink.tasks import checkpoint, probes
from rethink.tasks.models import build_model
from rethink.tasks.spec import DataSpec, RegularizerSpec, RunSpec, TrainSpec
from rethink.tasks.train import TIMING_COLUMNS, train_pack

REL = 1e-4  # the bar; the float64 agreement is far tighter in practice
EPS64 = torch.finfo(torch.float64).eps


def tiny_convnet() -> nn.Module:
    """alexnet_small at 5% width on 3x8x8 (conv, max-pool, LRN, BatchNorm, dropout, ~1k params),
    in train mode with non-trivial BatchNorm statistics: probes must switch to eval mode."""
    torch.manual_seed(0)
    model = build_model("alexnet_small", in_shape=(3, 8, 8), num_classes=10, width=0.05, dropout=0.5, batch_norm=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    return model.train()


def tiny_mlp() -> nn.Module:
    """4 -> 3 ReLU -> 2: 23 parameters, 3 of them redundant (each hidden unit's scale), so on 16
    points (32 rows) the functional dimension is at most 20; here less, with a clean gap."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def batch(shape: tuple[int, ...], n: int, classes: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def reference_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def dense_param_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(P*K, #params): every logit of the whole batch (one forward pass) w.r.t. all parameters."""
    ref = reference_copy(model)
    params = dict(ref.named_parameters())
    buffers = dict(ref.named_buffers())
    flat = torch.cat([p.detach().flatten() for p in params.values()])

    def logits(v: torch.Tensor) -> torch.Tensor:
        split, i = {}, 0
        for name, p in params.items():
            split[name] = v[i : i + p.numel()].view_as(p)
            i += p.numel()
        return torch.func.functional_call(ref, (split, buffers), (x.double(),)).flatten()

    return torch.autograd.functional.jacobian(logits, flat, vectorize=True)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---- each probe against its reference -----------------------------------------------------------


@pytest.mark.parametrize("make, shape", [(tiny_convnet, (3, 8, 8)), (tiny_mlp, (1, 2, 2))])
def test_jacobian_norm_matches_central_finite_differences(make, shape):
    model = make()
    x, _ = batch(shape, 6, 2)
    ref, h = reference_copy(model), 1e-6
    norms = []
    with torch.no_grad():
        for xi in x.double():
            steps = torch.eye(xi.numel(), dtype=torch.float64).view(-1, *shape) * h
            jac = (ref(xi + steps) - ref(xi - steps)) / (2 * h)  # (D, K)
            norms.append(float(jac.norm()))
    expected = sum(norms) / len(norms)
    assert expected > 0
    assert rel(probes.jacobian_norm(model, x), expected) <= REL


@pytest.mark.parametrize("make, shape, classes", [(tiny_convnet, (3, 8, 8), 10), (tiny_mlp, (1, 2, 2), 2)])
def test_grad_sqnorm_matches_a_per_point_autograd_loop(make, shape, classes):
    model = make()
    x, y = batch(shape, 6, classes)
    ref = reference_copy(model)
    params = [p for p in ref.parameters()]
    expected = 0.0
    for xi, yi in zip(x.double(), y):
        grads = torch.autograd.grad(ref(xi[None])[0, yi], params)
        expected += sum(float(g.pow(2).sum()) for g in grads)
    assert rel(probes.grad_sqnorm(model, x, y), expected) <= REL
    other = (y + 1) % classes  # the label picks the logit: another label, another value
    assert rel(probes.grad_sqnorm(model, x, other), expected) > 1e-3


@pytest.mark.parametrize("make, shape, n", [(tiny_convnet, (3, 8, 8), 6), (tiny_mlp, (1, 2, 2), 16)])
def test_functional_dim_matches_the_svd_of_a_dense_jacobian(make, shape, n):
    model = make()
    x, _ = batch(shape, n, 2)
    jac = dense_param_jacobian(model, x)
    sv = torch.linalg.svdvals(jac)
    expected_tol = float(sv[0]) * math.sqrt(max(jac.shape) * EPS64)  # the rule in the docstring
    dim, tol = probes.functional_dim(model, x)
    assert rel(tol, expected_tol) <= REL
    assert dim == int((sv > expected_tol).sum())
    assert dim == np.linalg.matrix_rank(jac.numpy())  # a clean gap: numpy's own rule on J agrees
    if make is tiny_mlp:
        assert dim < 20 < jac.shape[0]  # below both the row count and the symmetry bound


def test_functional_dim_is_the_same_when_memory_forces_many_small_groups(monkeypatch):
    model = tiny_convnet()
    x, _ = batch((3, 8, 8), 6, 10)
    whole = probes.functional_dim(model, x)
    monkeypatch.setattr(probes, "JACOBIAN_BYTES", 6 * 10 * 8 * 300)  # 300 columns a group, 1-6 points a pass
    assert len(probes._column_groups(probes._Probe.of(model).params, 300)) > 3
    split = probes.functional_dim(model, x)
    assert split[0] == whole[0] and rel(split[1], whole[1]) <= 1e-10


def test_column_groups_cover_every_parameter_once_output_first():
    params = {"a": torch.zeros(5), "b": torch.zeros(2, 3), "c": torch.zeros(4)}
    groups = probes._column_groups(params, 4)
    assert groups == [[("c", 0, 4)], [("b", 0, 4)], [("b", 4, 6), ("a", 0, 2)], [("a", 2, 5)]]


def test_act_sparsity_matches_hand_computed_relu_outputs():
    torch.manual_seed(0)
    model = build_model("mlp3x512", in_shape=(3, 4, 4), num_classes=10, width=0.05)  # 26 units a layer
    x, _ = batch((3, 4, 4), 16, 10)
    h, fractions = x.double().flatten(1), []
    linears = [m for m in model.features if isinstance(m, nn.Linear)]
    zeros = units = 0
    for lin in linears:
        h = torch.relu(h @ lin.weight.double().T + lin.bias.double())
        zeros, units = zeros + int((h == 0).sum()), units + h.numel()
        fractions.append(float((h == 0).double().mean()))
    overall, layers = probes.act_sparsity(model, x)
    assert len(layers) == 3 and all(rel(a, b) <= REL for a, b in zip(layers, fractions))
    assert rel(overall, zeros / units) <= REL and 0 < overall < 1


def test_act_sparsity_matches_forward_hooks_in_forward_order():
    model = tiny_convnet()
    x, _ = batch((3, 8, 8), 6, 10)
    ref, seen = reference_copy(model), []
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        ref(x.double())
    overall, layers = probes.act_sparsity(model, x)
    assert [round(f, 12) for f in layers] == [round(float((o == 0).double().mean()), 12) for o in seen]
    assert rel(overall, sum(int((o == 0).sum()) for o in seen) / sum(o.numel() for o in seen)) <= REL
    assert len(layers) == 4  # two conv modules, two hidden dense layers


def test_param_norm_is_the_l2_norm_of_all_parameters():
    model = tiny_convnet()
    expected = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
    assert rel(probes.param_norm(model), expected) <= 1e-12


# ---- measure_probes: the row it returns, and what it leaves untouched ---------------------------


def test_measure_probes_returns_the_probe_columns_as_plain_values():
    model = tiny_convnet()
    x, y = batch((3, 8, 8), 6, 10)
    row = probes.measure_probes(model, x, y)
    assert tuple(row) == probes.PROBE_COLUMNS
    assert all(type(v) is float for k, v in row.items() if k != "act_sparsity_layers")
    assert row["functional_dim"] == probes.functional_dim(model, x)[0]
    assert json.loads(row["act_sparsity_layers"]) == pytest.approx(probes.act_sparsity(model, x)[1])
    assert row["grad_sqnorm"] == pytest.approx(probes.grad_sqnorm(model, x, y), rel=1e-12)


def test_a_model_without_relu_has_no_sparsity_but_every_other_probe():
    torch.manual_seed(0)
    model = build_model("ioc_mlp", in_shape=(3, 4, 4), num_classes=10, width=0.05)
    x, y = batch((3, 4, 4), 8, 10)
    row = probes.measure_probes(model, x, y)
    assert row["act_sparsity"] is None and row["act_sparsity_layers"] is None
    assert all(row[k] > 0 for k in ("jacobian_norm", "grad_sqnorm", "functional_dim", "param_norm"))
    jac = dense_param_jacobian(model, x)
    assert row["functional_dim"] == np.linalg.matrix_rank(jac.numpy())


def test_probes_leave_model_grads_mode_and_rng_untouched():
    model = tiny_convnet()
    x, y = batch((3, 8, 8), 6, 10)
    nn.functional.cross_entropy(model(x), y).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    first = probes.measure_probes(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert probes.measure_probes(model.eval(), x, y) == first  # eval mode all along: same numbers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probes_on_cuda_match_cpu_and_keep_the_cuda_rng():
    model = tiny_convnet()
    x, y = batch((3, 8, 8), 6, 10)
    cpu = probes.measure_probes(model, x, y)
    device = torch.device("cuda")
    cuda_model = copy.deepcopy(model).to(device)
    rng = torch.cuda.get_rng_state(device)
    gpu = probes.measure_probes(cuda_model, x.to(device), y.to(device))
    assert torch.equal(torch.cuda.get_rng_state(device), rng)
    assert gpu["functional_dim"] == cpu["functional_dim"] and gpu["act_sparsity_layers"] == cpu["act_sparsity_layers"]
    for key in ("jacobian_norm", "grad_sqnorm", "functional_dim_tol", "param_norm"):
        assert rel(gpu[key], cpu[key]) <= 1e-8


# ---- in the training loop -------------------------------------------------------------------------


def train_rows(run: RunSpec, **kwargs) -> tuple[list[dict], dict[int, bytes]]:
    rows: list[dict] = []
    ckpts: dict[int, bytes] = {}
    (outcome,) = train_pack(
        [run], "unused", device="cpu", on_epoch=lambda _rid, row: rows.append(row),
        on_checkpoint=lambda _rid, epoch, state: ckpts.__setitem__(epoch, checkpoint.dumps(state)), **kwargs,
    )
    assert outcome.status == "done", outcome.error
    return rows, ckpts


def test_training_probes_every_k_epochs_without_changing_training():
    run = RunSpec(
        data=DataSpec(dataset="synthetic", train_size=200, test_size=100, image_size=8, num_classes=3),
        model="mlp1x512", width=0.05, regularizer=RegularizerSpec(dropout=0.3),
        train=TrainSpec(epochs=4, batch_size=32, lr=0.01, probe_every=2, checkpoint_every=1),
    )
    probed, ckpts = train_rows(run)
    plain, _ = train_rows(dataclasses.replace(run, train=dataclasses.replace(run.train, probe_every=0)))
    for row in probed:
        values = [row[c] for c in probes.PROBE_COLUMNS]
        if row["epoch"] % 2:
            assert values == [None] * len(values)
        else:
            assert None not in values and len(json.loads(row["act_sparsity_layers"])) == 1
            assert 0 < row["functional_dim"] <= probes.PROBE_SIZE * 3
    assert [r["epoch"] for r in probed] == [1, 2, 3, 4]
    skip = set(TIMING_COLUMNS) | set(probes.PROBE_COLUMNS) | {"run_id"}  # probe_every is in the run id
    for a, b in zip(probed, plain):
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    resumed, _ = train_rows(run, resume={run.run_id: ckpts[2]})  # probes included, resume is exact
    untimed = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in resumed]
    assert untimed == [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in probed[2:]]
