"""The `rethink` command in real processes: a driver killed mid-grid is resumed without losing or
doubling a row, and two concurrent submits of one grid train each run once."""

from __future__ import annotations

import os
import signal
import time

from rethink.storage.store import Store

from .conftest import SLOW_GRID, TINY_GRID, popen_rethink, rethink, sql


def wait_for_rows(store_path, at_least: int, proc, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (store_path / "store.json").exists():
            n = sql(store_path, "select count(*) from epochs")[0][0]
            if n >= at_least:
                return n
        time.sleep(0.2)
    raise AssertionError(f"fewer than {at_least} rows before the driver ended: {proc.poll()}")


def test_killed_driver_is_resumed_without_retraining_or_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_COMPACT", "0")  # it compares the done runs' own files before and after
    grid = tmp_path / "grid.yaml"
    grid.write_text(SLOW_GRID.format(name="kill-driver", epochs=10))
    store = tmp_path / "store"
    proc = popen_rethink("submit", str(grid), "--store", str(store), "--quiet")
    killed_at = wait_for_rows(store, 12, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    done_before = {
        run_id: (store / f"epochs/run_id={run_id}/epochs.parquet").read_bytes()
        for (run_id,) in sql(store, "select run_id from runs where status = 'done'")
    }
    result = rethink("resume", "kill-driver", "--store", str(store), "--quiet")
    assert result.returncode == 0, result.stderr
    assert sql(store, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(40, 40)]
    assert sql(store, "select count(*) from runs where status = 'done'") == [(4,)]
    for run_id, blob in done_before.items():  # finished runs were not trained again
        assert (store / f"epochs/run_id={run_id}/epochs.parquet").read_bytes() == blob
    assert killed_at >= 12


def test_two_concurrent_submits_train_each_run_once(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(TINY_GRID.format(name="twice", epochs=4))
    store = tmp_path / "store"
    Store.open(store, create=True)
    procs = [popen_rethink("submit", str(grid), "--store", str(store), "--quiet") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sql(store, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(48, 48)]
    assert sql(store, "select count(*), min(attempts), max(attempts) from runs") == [(12, 1, 1)]
    for run_dir in (store / "runs").glob("run_id=*"):  # one claim per run: nobody trained a run twice
        assert len(list((run_dir / "claims").iterdir())) == 1
