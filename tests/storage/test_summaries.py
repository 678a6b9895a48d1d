"""The summary views (storage/summaries.py) against numbers computed by hand from `runs` and
`epochs`: on a small store trained for real in-process (no Ray), and on hand-made stores for the
edge cases training cannot be relied on to hit (runs that never fit, a failed run)."""

from __future__ import annotations

import statistics
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from rethink.runner.grid import parse_grid, run_row
from rethink.runner.worker import run_pack
from rethink.storage import layout, schema
from rethink.storage.query import run_query
from rethink.storage.store import Store
from rethink.storage.summaries import PROBES
from rethink.storage.views import connect

from .conftest import epoch_rows

GRID = """\
name: mem
dataset: synthetic
data: {train_size: 64, test_size: 32, image_size: 8}
model: mlp1x512
corruption: [none, {kind: labels, level: [0.5, 1.0]}]
seed: [0, 1]
train: {epochs: 4, batch_size: 16, lr: 0.05, probe_every: 0}
resources: {cpus: 1, gpus: 0}
"""
SETTING = ["experiment", "dataset", "model", "width", "init_scale", "regularizer", "corruption", "level"]
COLUMNS = {
    "memorization": SETTING + ["epoch", "seeds", "step", "train_acc", "train_acc_std", "train_acc_min", "train_acc_max",
                               "train_loss", "train_loss_std", "train_loss_min", "train_loss_max", "train_acc_corrupted",
                               "train_acc_clean", "train_acc_true", "test_acc", "test_acc_std", "test_loss", "test_loss_std"],
    "fit_time": SETTING + ["fit_threshold", "epochs", "runs", "fitted", "never_fit", "epochs_to_fit", "epochs_to_fit_std",
                           "steps_to_fit", "steps_to_fit_std", "epochs_ratio", "steps_ratio"],
    "gaps": SETTING + ["seeds", "epochs_done", "train_acc", "train_acc_std", "test_acc", "test_acc_std", "gap", "gap_std",
                       "best_test_acc"],
    "probes": SETTING + ["epoch", "seeds", "step"] + [c for p in PROBES for c in (p, f"{p}_std")],
}


def fake_probes(seed: int, epoch: int) -> dict:
    """Probe values a test can average by hand: distinct per seed and epoch."""
    return {"act_sparsity": 0.4 + 0.01 * seed + 0.02 * epoch, "jacobian_norm": 2.0 + seed + epoch,
            "grad_sqnorm": 100.0 * (seed + 1) * epoch, "functional_dim": 30.0 + 5 * seed + epoch,
            "param_norm": 20.0 + 0.5 * seed + epoch}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six runs trained for real; then (labels 1.0, seed 1) is marked failed with its epochs left
    in place, and the two labels-0.5 runs get probe values at epochs 2 and 4."""
    root = tmp_path_factory.mktemp("summaries")
    grid = parse_grid(GRID)
    s = Store.open(root, create=True)
    s.save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    assert [r.outcome for r in run_pack(str(root), grid.name, [r.to_dict() for r in grid.runs], "unused", token="t")] == ["done"] * 6
    for run in grid.runs:
        c = run.corruption
        if (c.kind, c.level, run.seed) == ("labels", 1.0, 1):
            s.write_status(run.run_id, status="failed", error="RuntimeError: boom")
        if (c.kind, c.level) == ("labels", 0.5):
            path = root / layout.RunPaths(run.run_id).epochs
            rows = pq.read_table(path).to_pylist()
            for row in rows:
                if row["epoch"] % 2 == 0:
                    row.update(fake_probes(run.seed, row["epoch"]))
            pq.write_table(schema.table(rows, schema.EPOCHS), path)
    return root


def fetch(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def by_setting(rows: list[dict], *extra: str) -> dict[tuple, dict]:
    return {(r["corruption"], r["level"], *(r[e] for e in extra)): r for r in rows}


def stdev(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == pytest.approx(b, rel=1e-9, abs=1e-12))


def done_epochs(con: duckdb.DuckDBPyConnection) -> dict[tuple, list[dict]]:
    """The epoch rows of finished runs, grouped by (corruption, level, epoch): what a view averages."""
    out: dict[tuple, list[dict]] = {}
    for row in fetch(con, "SELECT e.*, r.corruption, r.level FROM epochs e JOIN runs r USING (run_id) "
                          "WHERE r.status = 'done' ORDER BY r.seed"):
        out.setdefault((row["corruption"], row["level"], row["epoch"]), []).append(row)
    return out


def test_every_view_has_its_columns(store: Path) -> None:
    con = connect(str(store))
    for view, columns in COLUMNS.items():
        assert [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()] == columns, view


def test_memorization_averages_the_finished_seeds_of_each_epoch(store: Path) -> None:
    con = connect(str(store))
    view = by_setting(fetch(con, "SELECT * FROM memorization"), "epoch")
    by_hand = done_epochs(con)
    assert sorted(view) == sorted(by_hand) and len(view) == 3 * 4
    for key, rows in by_hand.items():
        got = view[key]
        assert got["seeds"] == len(rows) == (1 if key[:2] == ("labels", 1.0) else 2), key  # the failed run is out
        for column in ("train_acc", "train_loss", "test_acc", "test_loss"):
            values = [r[column] for r in rows]
            assert close(got[column], statistics.fmean(values)), (key, column)
            assert close(got[f"{column}_std"], stdev(values)), (key, column)
        assert got["train_acc_min"] == min(r["train_acc"] for r in rows)
        assert got["train_acc_max"] == max(r["train_acc"] for r in rows)
        assert got["step"] == rows[0]["step"]
        assert close(got["train_acc_true"], statistics.fmean(r["train_acc_true"] for r in rows))


def test_fit_time_counts_runs_that_never_fit_and_compares_to_true_labels(store: Path) -> None:
    con = connect(str(store))
    view = by_setting(fetch(con, "SELECT * FROM fit_time"))
    runs = fetch(con, "SELECT * EXCLUDE (started_at, finished_at) FROM runs WHERE status = 'done'")
    assert len(view) == 3
    for (kind, level), got in view.items():
        mine = [r for r in runs if (r["corruption"], r["level"]) == (kind, level)]
        fitted = [r["epochs_to_fit"] for r in mine if r["epochs_to_fit"] is not None]
        assert (got["runs"], got["fitted"], got["never_fit"]) == (len(mine), len(fitted), len(mine) - len(fitted))
        assert close(got["epochs_to_fit"], statistics.fmean(fitted) if fitted else None)
        assert close(got["epochs_to_fit_std"], stdev(fitted))
        assert got["fit_threshold"] == 0.99 and got["epochs"] == 4
    base = view[("none", 0.0)]
    assert base["epochs_ratio"] == 1.0 and base["steps_ratio"] == 1.0
    for key, got in view.items():
        expected = None if got["epochs_to_fit"] is None else got["epochs_to_fit"] / base["epochs_to_fit"]
        assert close(got["epochs_ratio"], expected), key


def test_gaps_average_the_final_numbers_of_finished_runs(store: Path) -> None:
    con = connect(str(store))
    view = by_setting(fetch(con, "SELECT * FROM gaps"))
    runs = fetch(con, "SELECT * EXCLUDE (started_at, finished_at) FROM runs WHERE status = 'done'")
    assert len(view) == 3 and view[("labels", 1.0)]["seeds"] == 1
    for (kind, level), got in view.items():
        mine = [r for r in runs if (r["corruption"], r["level"]) == (kind, level)]
        assert got["seeds"] == len(mine) and got["epochs_done"] == 4
        for view_column, run_column in (("train_acc", "final_train_acc"), ("test_acc", "final_test_acc"), ("gap", "final_gap")):
            values = [r[run_column] for r in mine]
            assert close(got[view_column], statistics.fmean(values)), (kind, level, view_column)
            assert close(got[f"{view_column}_std"], stdev(values)), (kind, level, view_column)
        assert close(got["train_acc"] - got["test_acc"], got["gap"])


def test_probes_keep_only_the_epochs_where_probes_were_measured(store: Path) -> None:
    con = connect(str(store))
    view = by_setting(fetch(con, "SELECT * FROM probes"), "epoch")
    assert sorted(view) == [("labels", 0.5, 2), ("labels", 0.5, 4)]
    for (_, _, epoch), got in view.items():
        assert got["seeds"] == 2
        for probe in PROBES:
            values = [fake_probes(seed, epoch)[probe] for seed in (0, 1)]
            assert close(got[probe], statistics.fmean(values)) and close(got[f"{probe}_std"], stdev(values)), probe


def test_summaries_are_readable_through_rethink_query(store: Path) -> None:
    text = run_query(str(store), "select corruption, level, fitted, epochs_ratio from fit_time order by level", "csv")
    lines = text.splitlines()
    assert lines[0] == "corruption,level,fitted,epochs_ratio" and lines[1].startswith("none,0.0,2,1.0")


# ---- hand-made stores: the edge cases ---------------------------------------------------------

def hand_store(make_store, root: Path) -> Path:
    """Experiment `e`: true labels (seeds 0, 1 fit at epochs 2 and 3), random labels (seed 0 fits
    at 4, seed 1 never), and a failed run; experiment `other` shares none of them."""
    curves = {"n0": [0.5, 0.995, 1.0, 1.0], "n1": [0.4, 0.8, 0.99, 1.0], "r0": [0.1, 0.3, 0.6, 0.995],
              "r1": [0.1, 0.2, 0.3, 0.4], "x0": [0.9, 0.99, 1.0, 1.0]}
    runs = [{"experiment": "e", "run_id": "n0", "corruption": "none", "level": 0.0, "seed": 0},
            {"experiment": "e", "run_id": "n1", "corruption": "none", "level": 0.0, "seed": 1},
            {"experiment": "e", "run_id": "r0", "corruption": "labels", "level": 1.0, "seed": 0},
            {"experiment": "e", "run_id": "r1", "corruption": "labels", "level": 1.0, "seed": 1},
            {"experiment": "e", "run_id": "f2", "corruption": "labels", "level": 1.0, "seed": 2},
            {"experiment": "other", "run_id": "x0", "corruption": "none", "level": 0.0, "seed": 0}]
    for run in runs:
        run["fit_threshold"] = 0.99
    epochs = {rid: epoch_rows(rid, acc, [0.5] * len(acc)) for rid, acc in curves.items()}
    statuses = {rid: {"status": "done", "attempts": 1, "epochs_done": 4} for rid in curves}
    statuses["f2"] = {"status": "failed", "attempts": 3, "epochs_done": 0, "error": "boom"}
    return make_store(root, runs=runs, epochs=epochs, statuses=statuses)


def test_never_fit_runs_are_counted_apart_and_left_out_of_the_mean(make_store, tmp_path: Path) -> None:
    con = connect(str(hand_store(make_store, tmp_path / "hand")))
    view = by_setting(fetch(con, "SELECT * FROM fit_time WHERE experiment = 'e'"))
    none, labels = view[("none", 0.0)], view[("labels", 1.0)]
    assert (none["runs"], none["fitted"], none["never_fit"], none["epochs_to_fit"]) == (2, 2, 0, 2.5)
    assert (labels["runs"], labels["fitted"], labels["never_fit"], labels["epochs_to_fit"]) == (2, 1, 1, 4.0)
    assert labels["epochs_to_fit_std"] is None  # one run fit: no spread
    assert labels["epochs_ratio"] == pytest.approx(4.0 / 2.5) and labels["steps_ratio"] == pytest.approx(40 / 25)
    other = fetch(con, "SELECT * FROM fit_time WHERE experiment = 'other'")
    assert len(other) == 1 and other[0]["epochs_ratio"] == 1.0  # its own baseline, not e's


def test_a_setting_without_true_labels_has_no_ratio(make_store, tmp_path: Path) -> None:
    root = make_store(tmp_path / "nobase", runs=[{"experiment": "e", "run_id": "a", "corruption": "gaussian", "level": 1.0,
                                                  "fit_threshold": 0.99}],
                      epochs={"a": epoch_rows("a", [0.5, 1.0], [0.1, 0.1])},
                      statuses={"a": {"status": "done", "attempts": 1, "epochs_done": 2}})
    (row,) = fetch(connect(str(root)), "SELECT epochs_to_fit, epochs_ratio FROM fit_time")
    assert row == {"epochs_to_fit": 2.0, "epochs_ratio": None}


def test_unfinished_and_failed_runs_are_left_out_and_an_empty_store_gives_no_rows(make_store, tmp_path: Path) -> None:
    con = connect(str(hand_store(make_store, tmp_path / "hand")))
    assert fetch(con, "SELECT sum(seeds) AS n FROM gaps WHERE experiment = 'e'") == [{"n": 4}]
    assert fetch(con, "SELECT max(seeds) AS n FROM memorization WHERE experiment = 'e' AND corruption = 'labels'") == [{"n": 2}]
    empty = connect(str(make_store(tmp_path / "empty", runs=[], epochs={}, statuses={})))
    for view in COLUMNS:
        assert empty.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,), view
