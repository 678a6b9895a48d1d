"""The training loop on real torch and tiny synthetic data: memorization, exact resume, per-run
failure, early stopping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rethink.errors import SpecError
from rethink.tasks import checkpoint
from rethink.tasks.spec import CorruptionSpec, DataSpec, RegularizerSpec, RunSpec, TrainSpec
from rethink.tasks.train import EPOCH_COLUMNS, TIMING_COLUMNS, train_pack

SMALL = DataSpec(dataset="synthetic", train_size=200, test_size=100, image_size=12)


def spec(**changes) -> RunSpec:
    base = RunSpec(data=SMALL, model="mlp1x512", train=TrainSpec(epochs=4, batch_size=32, lr=0.01, checkpoint_every=1))
    return dataclasses.replace(base, **changes)


def collect(runs, **kwargs):
    rows: dict[str, list[dict]] = {}
    ckpts: dict[tuple[str, int], bytes] = {}
    outcomes = train_pack(
        runs, "unused", device="cpu",
        on_epoch=lambda rid, row: rows.setdefault(rid, []).append(row),
        on_checkpoint=lambda rid, epoch, state: ckpts.__setitem__((rid, epoch), checkpoint.dumps(state)),
        **kwargs,
    )
    return rows, ckpts, outcomes


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING_COLUMNS}


def test_random_labels_are_memorized_while_test_stays_at_chance():
    run = RunSpec(
        data=DataSpec(dataset="synthetic", train_size=512, test_size=300, image_size=32),
        model="mlp1x512",
        corruption=CorruptionSpec("labels", 1.0),
        train=TrainSpec(epochs=15, batch_size=64, lr=0.01, lr_decay=1.0),  # fits at epoch ~7
    )
    rows, _, (outcome,) = collect([run])
    last = rows[run.run_id][-1]
    assert last["train_acc"] == 1.0
    assert last["test_acc"] < 0.2  # 10 classes: chance is 0.1
    assert last["gap"] > 0.8
    # labels:1.0 keeps ~10% of labels by chance: the corrupted subset was memorized too
    assert last["train_acc_corrupted"] == 1.0 and last["train_acc_true"] < 0.25
    assert outcome.status == "done" and outcome.epochs_to_fit is not None


def test_rows_have_the_epoch_columns_and_valid_values():
    run = spec(corruption=CorruptionSpec("labels", 0.5))
    rows, _, _ = collect([run])
    assert [r["epoch"] for r in rows[run.run_id]] == [1, 2, 3, 4]
    for row in rows[run.run_id]:
        assert tuple(row) == EPOCH_COLUMNS
        for key in ("train_acc", "train_acc_corrupted", "train_acc_clean", "train_acc_true", "test_acc"):
            assert 0.0 <= row[key] <= 1.0
        assert row["step"] == row["epoch"] * math.ceil(200 / 32)
        assert math.isclose(row["lr"], 0.01 * 0.95 ** (row["epoch"] - 1))
        assert math.isclose(row["gap"], row["train_acc"] - row["test_acc"])
        assert row["val_acc"] is None  # no early stopping, no held-out split


@pytest.mark.parametrize("corruption", ["label_noise", "labels"])
def test_resume_from_a_checkpoint_gives_the_same_rows_bitwise(corruption):
    """Stopping after epoch 2 and resuming gives exactly the rows of never stopping, with dropout,
    augmentation and per-step label noise all drawing from their streams."""
    reg = RegularizerSpec(dropout=0.3, augment=True, weight_decay=5e-4)
    runs = [spec(corruption=CorruptionSpec(corruption, 0.4), regularizer=reg, seed=s) for s in (0, 1)]
    full, ckpts, _ = collect(runs)
    resume = {r.run_id: ckpts[(r.run_id, 2)] for r in runs}
    resumed, _, outcomes = collect(runs, resume=resume)
    for run in runs:
        assert [r["epoch"] for r in resumed[run.run_id]] == [3, 4]
        assert [untimed(r) for r in resumed[run.run_id]] == [untimed(r) for r in full[run.run_id][2:]]
    assert all(o.epochs_done == 4 for o in outcomes)


def test_runs_of_a_pack_train_as_if_alone():
    a, b = spec(seed=0), spec(seed=1, corruption=CorruptionSpec("labels", 1.0))
    together, _, _ = collect([a, b])
    alone, _, _ = collect([a])
    assert [untimed(r) for r in together[a.run_id]] == [untimed(r) for r in alone[a.run_id]]
    assert together[a.run_id] != together[b.run_id]


def test_truncated_checkpoint_is_refused():
    run = spec()
    _, ckpts, _ = collect([run])
    blob = ckpts[(run.run_id, 4)]
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.loads(blob[: len(blob) // 2])
    damaged = blob[:-10] + bytes(10)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.loads(damaged)
    # in a pack the damaged run fails and says why; the healthy one finishes
    other = spec(seed=5)
    _, _, outcomes = collect([run, other], resume={run.run_id: damaged})
    assert outcomes[0].status == "failed" and "checksum" in outcomes[0].error
    assert outcomes[1].status == "done" and outcomes[1].epochs_done == 4


def test_a_diverging_run_stops_and_the_pack_goes_on():
    wild = spec(init_scale=50.0, train=TrainSpec(epochs=4, batch_size=32, lr=50.0))
    calm = spec(init_scale=50.0, train=TrainSpec(epochs=4, batch_size=32, lr=0.001))
    rows, _, outcomes = collect([wild, calm])
    assert outcomes[0].stop_reason == "diverged" and outcomes[0].epochs_done < 4
    assert len(rows[wild.run_id]) == outcomes[0].epochs_done
    assert outcomes[1].stop_reason == "completed" and len(rows[calm.run_id]) == 4


def test_early_stopping_on_random_labels_stops_before_the_end():
    run = spec(
        corruption=CorruptionSpec("labels", 1.0),
        regularizer=RegularizerSpec(early_stopping=2, holdout=0.2),
        train=TrainSpec(epochs=30, batch_size=32),
    )
    rows, _, (outcome,) = collect([run])
    assert outcome.stop_reason == "early_stopped" and outcome.epochs_done < 30
    assert all(r["val_acc"] is not None for r in rows[run.run_id])
    # the held-out fifth is not trained on: each epoch takes ceil(160 / 32) steps
    assert rows[run.run_id][0]["step"] == 5


def test_pack_of_different_shapes_is_refused():
    with pytest.raises(SpecError):
        collect([spec(), spec(model="mlp3x512")])


def test_weight_decay_shrinks_the_weights():
    plain, decayed = spec(), spec(regularizer=RegularizerSpec(weight_decay=0.05))
    _, ckpts, _ = collect([plain, decayed])

    def weight_norm(run):
        state = checkpoint.loads(ckpts[(run.run_id, 4)])["model"]
        return sum(float(v.norm() ** 2) for k, v in state.items() if k.endswith("weight")) ** 0.5

    assert weight_norm(decayed) < weight_norm(plain)


def test_adam_trains():
    run = spec(train=TrainSpec(epochs=3, batch_size=32, lr=1e-3, optimizer="adam"))
    rows, _, (outcome,) = collect([run])
    assert outcome.status == "done"
    assert rows[run.run_id][-1]["train_loss"] < rows[run.run_id][0]["train_loss"]


def test_zhang_preprocessing_crops_and_whitens():
    run = spec(data=dataclasses.replace(SMALL, image_size=32, crop=28, whiten=True))
    _, ckpts, (outcome,) = collect([run])
    assert outcome.status == "done"
    first = checkpoint.loads(ckpts[(run.run_id, 4)])["model"]
    assert any(v.shape == (512, 28 * 28 * 3) for v in first.values())  # the MLP saw 28x28x3 inputs
    assert torch.isfinite(torch.cat([v.flatten().float() for v in first.values()])).all()
