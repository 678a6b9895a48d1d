"""Packed training against the side-by-side loop, on the CPU in float64: a run trained in a
stacked pack gives the rows of the same run trained alone; a diverging run drops out alone;
resume is exact; what cannot stack falls back."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rethink.tasks import checkpoint
from rethink.tasks.spec import CorruptionSpec, DataSpec, RegularizerSpec, RunSpec, TrainSpec
from rethink.tasks.stacked import (
    MAX_PACK, Stacker, StackOptions, resolve_stacking, stackable, suggested_pack_size, unstackable_reason,
)
from rethink.tasks.train import TIMING_COLUMNS, train_pack

SMALL = DataSpec(dataset="synthetic", train_size=200, test_size=100, image_size=8)
TOLERANCE = 1e-6  # relative, on every metric column; float64 agrees to ~1e-15 here
GB = 2**30


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP on a busy machine crawls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(lr: float = 0.01, momentum: float = 0.9, optimizer: str = "sgd", epochs: int = 4, **changes) -> RunSpec:
    train = TrainSpec(epochs=epochs, batch_size=32, lr=lr, momentum=momentum, optimizer=optimizer, checkpoint_every=1)
    return dataclasses.replace(RunSpec(data=SMALL, model="mlp1x512", width=0.25, train=train), **changes)


def mixed_pack(**common) -> list[RunSpec]:
    """Three runs differing in everything a pack may differ in."""
    return [
        spec(seed=0, corruption=CorruptionSpec("labels", 0.2), **common),
        spec(seed=1, lr=0.02, corruption=CorruptionSpec("labels", 0.6), init_scale=0.8,
             regularizer=RegularizerSpec(weight_decay=5e-4, label_smoothing=0.1, augment=True), **common),
        spec(seed=2, lr=0.005, momentum=0.5, corruption=CorruptionSpec("label_noise", 0.3),
             regularizer=RegularizerSpec(weight_decay=1e-3), **common),
    ]


def collect(runs, stack, **kwargs):
    rows: dict[str, list[dict]] = {}
    ckpts: dict[tuple[str, int], bytes] = {}
    outcomes = train_pack(
        runs, "unused", device="cpu", stack=stack, dtype=torch.float64,
        on_epoch=lambda rid, row: rows.setdefault(rid, []).append(row),
        on_checkpoint=lambda rid, epoch, state: ckpts.__setitem__((rid, epoch), checkpoint.dumps(state)),
        **kwargs,
    )
    return rows, ckpts, outcomes


def max_relative_error(rows_a: list[dict], rows_b: list[dict]) -> float:
    """Over every non-timing column; None must match None, NaN must match NaN."""
    assert len(rows_a) == len(rows_b)
    worst = 0.0
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys()
        for key in a.keys() - set(TIMING_COLUMNS):
            x, y = a[key], b[key]
            if not isinstance(x, float) or not isinstance(y, float) or x == y:
                assert x == y or (x != x and y != y), (key, x, y)
                continue
            if x != x or y != y:
                assert x != x and y != y, (key, x, y)
                continue
            worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return worst


def alone(runs: list[RunSpec]) -> dict[str, list[dict]]:
    return {run.run_id: collect([run], stack=False)[0][run.run_id] for run in runs}


def assert_match(stacked: dict[str, list[dict]], runs: list[RunSpec], reference=None) -> float:
    reference = reference or alone(runs)
    worst = max(max_relative_error(stacked[run.run_id], reference[run.run_id]) for run in runs)
    assert worst <= TOLERANCE
    return worst


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_stacked_pack_matches_its_runs_trained_alone(optimizer):
    runs = mixed_pack(optimizer=optimizer)
    if optimizer == "adam":  # Adam's steps are ~lr each: a tenth of SGD's rates
        runs = [dataclasses.replace(r, train=dataclasses.replace(r.train, lr=r.train.lr / 10)) for r in runs]
    assert stackable(runs)
    rows, ckpts, outcomes = collect(runs, stack=True)
    assert all(o.status == "done" and o.epochs_done == 4 for o in outcomes)
    reference = {run.run_id: collect([run], stack=False) for run in runs}
    assert_match(rows, runs, {rid: ref[0][rid] for rid, ref in reference.items()})
    for run in runs:  # the weights and optimizer state written back are the run's own
        mine = checkpoint.loads(ckpts[(run.run_id, 4)])
        theirs = checkpoint.loads(reference[run.run_id][1][(run.run_id, 4)])
        for key, value in mine["model"].items():
            torch.testing.assert_close(value, theirs["model"][key], rtol=1e-9, atol=1e-12)
        assert mine["optimizer"]["buffers"].keys() == theirs["optimizer"]["buffers"].keys()
        for key, buffers in mine["optimizer"]["buffers"].items():  # momentum buffers; Adam's moments
            assert buffers.keys() == theirs["optimizer"]["buffers"][key].keys()
            for name, value in buffers.items():
                torch.testing.assert_close(value, theirs["optimizer"]["buffers"][key][name], rtol=1e-9, atol=1e-12)
        assert mine["optimizer"]["steps"].equal(theirs["optimizer"]["steps"])
        assert mine["progress"] == theirs["progress"] and mine["rng"]["data"].equal(theirs["rng"]["data"])


def test_a_stacked_convnet_matches_alone():
    data = DataSpec(dataset="synthetic", train_size=64, test_size=32, image_size=12)
    runs = [spec(seed=s, model="alexnet_small", width=0.25, epochs=2, data=data,
                 regularizer=RegularizerSpec(augment=True)) for s in (0, 1)]  # every run augments
    rows, _, _ = collect(runs, stack=True)
    assert_match(rows, runs)


def test_runs_with_their_own_images_and_early_stopping_stack():
    """Image corruptions (gaussian ones are float) and held-out splits give each run its own
    images; early stopping drops runs out at their own epochs."""
    reg = RegularizerSpec(early_stopping=1, holdout=0.2)
    runs = [spec(seed=0, epochs=6, corruption=CorruptionSpec("gaussian", 1.0), regularizer=reg),
            spec(seed=1, epochs=6, corruption=CorruptionSpec("shuffled_pixels", 1.0), regularizer=reg),
            spec(seed=2, epochs=6, corruption=CorruptionSpec("labels", 1.0), regularizer=reg)]
    assert stackable(runs)
    rows, _, outcomes = collect(runs, stack=True)
    assert any(o.stop_reason == "early_stopped" for o in outcomes)
    assert_match(rows, runs)


def test_models_that_differ_in_settings_stack_only_with_their_like():
    """ioc_mlp keeps its init scale in its modules, not its parameters: runs of one pack with
    different scales must not share a forward."""
    runs = [spec(model="ioc_mlp", seed=0), spec(model="ioc_mlp", seed=1), spec(model="ioc_mlp", seed=2, init_scale=2.0)]
    rows, _, _ = collect(runs, stack=True)
    assert_match(rows, runs)


def test_a_diverging_run_drops_out_and_the_others_match():
    wild = spec(lr=1e12, init_scale=1e4, seed=3)  # overflows float64 in its second epoch
    runs = [wild] + mixed_pack()[:2]
    rows, _, outcomes = collect(runs, stack=True)
    assert outcomes[0].stop_reason == "diverged" and outcomes[0].epochs_done == 2
    assert len(rows[wild.run_id]) == outcomes[0].epochs_done
    assert all(o.stop_reason == "completed" and o.epochs_done == 4 for o in outcomes[1:])
    assert_match(rows, runs)  # the diverged run's own rows too, NaN for NaN


def test_resume_mid_pack_is_exact():
    """Runs resumed from different epochs stack together and continue as if never stopped."""
    runs = mixed_pack()
    full, ckpts, _ = collect(runs, stack=True)
    resume = {runs[0].run_id: ckpts[(runs[0].run_id, 1)], runs[1].run_id: ckpts[(runs[1].run_id, 2)],
              runs[2].run_id: ckpts[(runs[2].run_id, 2)]}
    resumed, _, outcomes = collect(runs, stack=True, resume=resume)
    assert [r["epoch"] for r in resumed[runs[0].run_id]] == [2, 3, 4]
    for run, start in zip(runs, (1, 2, 2)):
        assert max_relative_error(resumed[run.run_id], full[run.run_id][start:]) <= TOLERANCE
    assert all(o.epochs_done == 4 for o in outcomes)


def test_runs_that_cannot_stack_fall_back_to_side_by_side():
    dropout = spec(seed=4, regularizer=RegularizerSpec(dropout=0.3))
    runs = mixed_pack()[:2] + [dropout]
    assert not stackable(runs) and "dropout" in unstackable_reason(runs)
    rows, _, _ = collect(runs, stack=True)  # the first two stack, the dropout run trains alone
    reference = alone(runs)
    assert max_relative_error(rows[dropout.run_id], reference[dropout.run_id]) == 0.0
    assert_match(rows, runs[:2], reference)


def test_a_failing_stacked_epoch_rewinds_and_falls_back(monkeypatch):
    """Say the device runs out of memory mid-epoch: the runs' streams are rewound and the pack
    goes on side by side, with the rows of runs trained alone."""

    def out_of_memory(self, states):
        for state in states:  # consume the streams as a real epoch would before failing
            torch.randperm(len(state.labels), generator=state.generator)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Stacker, "_train_group", out_of_memory)
    runs = mixed_pack()
    with pytest.warns(UserWarning, match="side by side"):
        rows, _, _ = collect(runs, stack=True)
    assert max_relative_error(rows[runs[0].run_id], alone(runs[:1])[runs[0].run_id]) == 0.0


def test_the_stacking_rule():
    bn = RegularizerSpec(batch_norm=True)
    assert not stackable([spec()])  # nothing to stack with
    assert "BatchNorm" in unstackable_reason([spec(regularizer=bn), spec(seed=1, regularizer=bn)])
    assert not stackable([spec(model="resnet18"), spec(model="resnet18", seed=1)])  # BN by default
    no_bn = RegularizerSpec(batch_norm=False)
    assert stackable([spec(model="resnet18", regularizer=no_bn), spec(model="resnet18", seed=1, regularizer=no_bn)])
    assert not stackable([spec(), spec(seed=1, optimizer="adam")])
    assert not stackable([spec(), spec(seed=1, regularizer=RegularizerSpec(early_stopping=2))])


def test_stacking_is_on_for_cuda_and_forced_by_env(monkeypatch):
    monkeypatch.delenv("RETHINK_STACK", raising=False)
    assert resolve_stacking(None, torch.device("cpu")) is None
    assert resolve_stacking(None, torch.device("cuda")) == StackOptions()
    assert resolve_stacking(False, torch.device("cuda")) is None
    monkeypatch.setenv("RETHINK_STACK", "1")
    assert resolve_stacking(None, torch.device("cpu")) == StackOptions()
    monkeypatch.setenv("RETHINK_STACK", "0")
    assert resolve_stacking(None, torch.device("cuda")) is None
    options = StackOptions(bf16=True)
    assert resolve_stacking(options, torch.device("cpu")) is options


def test_suggested_pack_size():
    cifar = DataSpec(dataset="cifar10")
    mlp = spec(model="mlp3x512", width=1.0, data=cifar)
    assert suggested_pack_size(mlp, None) == 1  # CPU
    assert suggested_pack_size(mlp, 80 * GB) == MAX_PACK
    small, big = (suggested_pack_size(spec(model="alexnet_small", width=1.0, data=cifar), m * GB) for m in (2, 80))
    assert 1 < small < big <= MAX_PACK
    assert suggested_pack_size(spec(data=cifar, regularizer=RegularizerSpec(dropout=0.5)), 80 * GB) == 1
    assert suggested_pack_size(spec(model="resnet18", data=cifar), 80 * GB) == 1  # BatchNorm
