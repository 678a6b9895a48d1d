"""A tiny store written by hand with pyarrow, in the layout of rethink.storage.layout, and a
fingerprint of every file in it (to prove a query changed nothing).

The default store: experiment `fig1` has runs r1, r2, r3 and `fig2` has r3 (shared) and r4.
    r1  labels 0.0, threshold 0.99, 4 epochs, fits at epoch 3, status done
    r2  labels 1.0, threshold 0.9,  3 epochs, fits at epoch 3, status running (2 attempts)
    r3  gaussian,                   no epochs,                 status failed (3 attempts)
    r4  shuffled_pixels,            2 epochs, never fits,      no status file (pending)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rethink.storage import layout, schema

CURVES = {  # run_id: (train_acc per epoch, test_acc per epoch)
    "r1": ([0.5, 0.9, 0.995, 1.0], [0.4, 0.6, 0.65, 0.62]),
    "r2": ([0.1, 0.5, 0.95], [0.1, 0.1, 0.09]),
    "r4": ([0.3, 0.6], [0.5, 0.55]),
}

RUNS = [
    {"experiment": "fig1", "run_id": "r1", "corruption": "labels", "level": 0.0, "fit_threshold": 0.99},
    {"experiment": "fig1", "run_id": "r2", "corruption": "labels", "level": 1.0, "fit_threshold": 0.9,
     "regularizer": "weight_decay=0.0005", "weight_decay": 0.0005},
    {"experiment": "fig1", "run_id": "r3", "corruption": "gaussian", "level": None, "fit_threshold": 0.99},
    {"experiment": "fig2", "run_id": "r3", "corruption": "gaussian", "level": None, "fit_threshold": 0.99},
    {"experiment": "fig2", "run_id": "r4", "corruption": "shuffled_pixels", "level": None, "fit_threshold": 0.99,
     "regularizer": "dropout=0.5+augment", "dropout": 0.5, "augment": True},
]

STATUSES = {
    "r1": {"status": "done", "attempts": 1, "epochs_done": 4, "stop_reason": "completed"},
    "r2": {"status": "running", "attempts": 2, "epochs_done": 3},
    "r3": {"status": "failed", "attempts": 3, "epochs_done": 0, "stop_reason": "error",
           "error": "RuntimeError: CUDA out of memory"},
}

CONFIG_DEFAULTS = {"dataset": "cifar10", "model": "mlp1x512", "regularizer": "none", "weight_decay": 0.0,
                   "dropout": 0.0, "augment": False, "seed": 0, "epochs": 4, "batch_size": 128, "lr": 0.01}


def epoch_rows(run_id: str, train_acc: list[float], test_acc: list[float]) -> list[dict]:
    """One row per epoch, numbered from 1, 10 steps per epoch, gap = train - test."""
    return [{"run_id": run_id, "epoch": i, "step": 10 * i, "lr": 0.01, "train_loss": 1.0 - tr, "train_acc": tr,
             "train_acc_corrupted": tr, "train_acc_clean": tr, "train_acc_true": tr, "test_loss": 1.0 - te,
             "test_acc": te, "gap": tr - te, "wall_s": 1.5, "examples_per_s": 1000.0, "param_norm": 10.0 + i}
            for i, (tr, te) in enumerate(zip(train_acc, test_acc), start=1)]


def write_table(root: Path, relative: str, table: pa.Table) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def build_store(root: Path, runs: list[dict] | None = None, epochs: dict[str, list[dict]] | None = None,
                statuses: dict[str, dict] | None = None) -> Path:
    """Write a store at `root`: runs (config rows, grouped into experiments by their
    `experiment`), epochs {run_id: rows} and statuses {run_id: status row}. Each defaults to the
    store described above; pass [] or {} for none."""
    runs = RUNS if runs is None else runs
    epochs = {rid: epoch_rows(rid, *curve) for rid, curve in CURVES.items()} if epochs is None else epochs
    statuses = STATUSES if statuses is None else statuses
    root.mkdir(parents=True, exist_ok=True)
    (root / layout.MARKER).write_text(json.dumps({"rethink_store": 1}))
    for name in sorted({run["experiment"] for run in runs}):
        rows = [{**CONFIG_DEFAULTS, **run} for run in runs if run["experiment"] == name]
        write_table(root, layout.ExperimentPaths(name).runs, schema.table(rows, schema.EXPERIMENT_RUNS))
    for run_id, rows in epochs.items():
        write_table(root, layout.RunPaths(run_id).epochs, schema.table(rows, schema.EPOCHS))
    for run_id, row in statuses.items():
        write_table(root, layout.RunPaths(run_id).status, schema.table([{"run_id": run_id, **row}], schema.STATUS))
    return root


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (folders included, as empty)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def make_store() -> Callable[..., Path]:
    """make_store(tmp_path, runs=..., epochs=..., statuses=...) -> the store's folder."""
    return build_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The default tiny store, in `tmp_path / "store"`."""
    return build_store(tmp_path / "store")
