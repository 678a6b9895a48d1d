"""Grids on a real local Ray, written to a real store, read back with DuckDB: completion, exactly
one row per (run, epoch), failures that stay per run, a killed worker, damaged files, cancel."""

from __future__ import annotations

import os
import signal
import threading
import time

from rethink.runner import api
from rethink.runner.grid import parse_grid
from rethink.runner.worker import run_pack
from rethink.storage.store import Store
from rethink.storage.views import connect
from rethink.tasks import checkpoint
from rethink.tasks.train import TIMING_COLUMNS, train_pack

from .conftest import RAISING_GRID, SLOW_GRID, TINY_GRID, damaged_cifar, sql

VIEW_COLUMNS = {
    "runs": "run_id experiment dataset model corruption level regularizer weight_decay dropout augment seed "
    "status attempts epochs_done epochs_to_fit final_train_acc final_test_acc best_test_acc final_gap error",
    "epochs": "run_id epoch step lr train_loss train_acc train_acc_corrupted train_acc_clean train_acc_true "
    "test_loss test_acc gap wall_s examples_per_s act_sparsity jacobian_norm grad_sqnorm functional_dim param_norm",
}


def test_a_grid_completes_with_one_row_per_run_and_epoch(ray_local, tmp_path):
    grid = parse_grid(TINY_GRID.format(name="tiny", epochs=3))
    assert len(grid.runs) == 12
    summary = api.submit(grid, str(tmp_path), "unused", quiet=True)
    assert (summary.done, summary.failed) == (12, 0)
    assert sql(tmp_path, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(36, 36)]
    assert sql(tmp_path, "select status, count(*) from runs group by status") == [("done", 12)]
    db = connect(str(tmp_path))
    for view, columns in VIEW_COLUMNS.items():
        have = {row[0] for row in db.execute(f"describe {view}").fetchall()}
        assert set(columns.split()) <= have, set(columns.split()) - have
    # the same grid again trains nothing; the same runs under another name are the same runs
    again = api.submit(grid, str(tmp_path), "unused", quiet=True)
    assert (again.done, again.skipped) == (0, 12)
    other = api.submit(parse_grid(TINY_GRID.format(name="tiny-copy", epochs=3)), str(tmp_path), "unused", quiet=True)
    assert other.skipped == 12
    assert sql(tmp_path, "select count(*) from epochs") == [(36,)]
    assert sql(tmp_path, "select count(*) from runs") == [(24,)]  # one row per (experiment, run)


def test_a_failing_run_is_failed_with_its_error_and_the_rest_go_on(ray_local, tmp_path):
    # the CIFAR-10 runs raise on the worker (their data files are damaged); the synthetic ones don't
    text = RAISING_GRID.format(name="mixed", epochs=2)
    data = damaged_cifar(tmp_path / "data")
    summary = api.submit(parse_grid(text), str(tmp_path / "s"), data, quiet=True)
    assert (summary.done, summary.failed) == (6, 6)
    failed = sql(tmp_path / "s", "select dataset, error from runs where status = 'failed'")
    assert {d for d, _ in failed} == {"cifar10"}
    assert all(e for _, e in failed)
    assert sql(tmp_path / "s", "select count(*) from epochs") == [(12,)]


def test_a_killed_worker_is_retried_and_its_run_resumes_from_a_checkpoint(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_COMPACT", "0")  # it reads the victim's own status file afterwards
    grid = parse_grid(SLOW_GRID.format(name="kill-worker", epochs=12))
    store = Store.open(tmp_path, create=True)
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=api.submit(grid, str(tmp_path), "unused", quiet=True)))
    thread.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for run in grid.runs:
            status = store.read_status(run.run_id) or {}
            if status.get("status") == "running" and (status.get("epochs_done") or 0) >= 3:
                victim = (run.run_id, status["pid"], status["epochs_done"])
                break
        time.sleep(0.05)
    assert victim, "no run reached epoch 3"
    os.kill(victim[1], signal.SIGKILL)
    thread.join(timeout=240)
    assert done["s"].failed == 0 and done["s"].done == len(grid.runs)
    assert sql(tmp_path, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(48, 48)]
    attempts, resumed_from = sql(tmp_path, f"""
        select s.attempts, s.resumed_from
        from read_parquet('{tmp_path}/runs/run_id={victim[0]}/status.parquet') s""")[0]
    # killed after writing row k, maybe before checkpoint k: it restarts from k - 1 or k, not 0
    assert attempts == 2 and resumed_from >= victim[2] - 1 >= 2


def test_damaged_checkpoint_and_rows_are_detected_and_the_run_redone(tmp_path):
    grid = parse_grid(TINY_GRID.format(name="damaged", epochs=6))
    run = grid.runs[0]
    rows, ckpts = [], {}
    train_pack([run], "unused", device="cpu", on_epoch=lambda _, r: rows.append(r),
               on_checkpoint=lambda _, e, state: ckpts.__setitem__(e, checkpoint.dumps(state)))
    store = Store.open(tmp_path, create=True)
    store.save_experiment("damaged", grid.text, [])
    # an interrupted attempt: rows of epochs 1-4, checkpoints 3 and 4, the newest truncated
    store.write_epochs(run.run_id, rows[:4])
    store.write_checkpoint(run.run_id, 3, ckpts[3])
    store.write_checkpoint(run.run_id, 4, ckpts[4][: len(ckpts[4]) // 3])
    (result,) = run_pack(str(tmp_path), "damaged", [run.to_dict()], "unused", token="t1")
    assert result.outcome == "done" and result.resumed_from == 3
    assert any("epoch 4" in note and "truncated" in note for note in result.notes)
    again = store.read_epochs(run.run_id)

    def untimed(r):
        return {k: v for k, v in r.items() if k in rows[0] and k not in TIMING_COLUMNS}

    assert [untimed(r) for r in again] == [untimed(r) for r in rows]
    # a truncated result file: reported, and the run is trained again from the start
    store.write_status(run.run_id, status="failed")
    path = tmp_path / f"epochs/run_id={run.run_id}/epochs.parquet"
    path.write_bytes(path.read_bytes()[:100])
    (result,) = run_pack(str(tmp_path), "damaged", [run.to_dict()], "unused", token="t2")
    assert result.outcome == "done" and result.resumed_from == 0
    assert any("damaged" in note for note in result.notes)
    assert [untimed(r) for r in store.read_epochs(run.run_id)] == [untimed(r) for r in rows]


def test_cancel_stops_the_grid_and_resume_finishes_it(ray_local, tmp_path):
    grid = parse_grid(SLOW_GRID.format(name="cancel-me", epochs=8))
    store = Store.open(tmp_path, create=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(s=api.submit(grid, str(tmp_path), "unused", quiet=True)))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
        (store.read_status(r.run_id) or {}).get("epochs_done") for r in grid.runs
    ):
        time.sleep(0.05)
    api.cancel("cancel-me", str(tmp_path))
    thread.join(timeout=120)
    assert result["s"].cancelled
    states = dict(sql(tmp_path, "select status, count(*) from runs group by status"))
    assert states.get("done", 0) < len(grid.runs) and "running" not in states
    summary = api.resume("cancel-me", str(tmp_path), "unused", quiet=True)
    assert summary.failed == 0 and summary.done + summary.skipped == len(grid.runs)
    assert sql(tmp_path, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(32, 32)]


def test_resume_completes_a_freeze_whose_run_list_was_never_written(ray_local, tmp_path):
    """A submit that died between freezing grid.yaml and writing runs.parquet: resume rebuilds
    the run list from the frozen grid and trains every run, instead of seeing none."""
    grid = parse_grid(TINY_GRID.format(name="half-frozen", epochs=1).replace("model: [mlp1x512, mlp3x512]",
                                                                               "model: mlp1x512"))
    store = Store.open(tmp_path, create=True)
    store.write("experiments/name=half-frozen/grid.yaml", grid.text.encode())
    summary = api.resume("half-frozen", str(tmp_path), "unused", quiet=True)
    assert (summary.done, summary.failed) == (len(grid.runs), 0) and len(grid.runs) == 6
    assert sql(tmp_path, "select count(*) from runs where experiment = 'half-frozen' and status = 'done'") == [(6,)]
