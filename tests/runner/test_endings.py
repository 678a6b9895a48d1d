"""Every way a run can end leaves `rethink status` true: a run that raises, a worker that dies
once too often, a damaged claim, a done run whose rows were lost or damaged. Through the real
command in its own process (its own embedded Ray), then read back through the CLI and the views."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rethink.runner.grid import parse_grid
from rethink.storage.layout import RunPaths
from rethink.storage.store import Store
from tests.runner.conftest import RAISING_GRID, SLOW_GRID, TINY_GRID, damaged_cifar, rethink, sql

def submit(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    return rethink("submit", str(grid), "--store", str(tmp_path / "s"), "--quiet", *extra)


def states(store: Path) -> dict[str, str]:
    return dict(sql(store, "select run_id, status from runs"))


def test_a_run_that_raises_is_failed_with_its_error(tmp_path):
    data = damaged_cifar(tmp_path / "data")
    result = submit(tmp_path, RAISING_GRID.format(name="raises", epochs=1), "--data-dir", str(data))
    assert result.returncode == 1 and "6 done, 6 failed" in result.stdout
    failed = sql(tmp_path / "s", "select dataset, status, stop_reason, error from runs where status <> 'done'")
    assert {(d, s, r) for d, s, r, _ in failed} == {("cifar10", "failed", "error")}
    assert len(failed) == 6 and all(e for *_, e in failed)
    # --quiet, for cluster logs: what happens before the first epoch, then one line per finished run
    lines = result.stderr.splitlines()
    assert lines[0] == "raises: starting an embedded Ray cluster…" and "queued" in lines[1]
    finished = [line for line in lines if line.startswith("raises: [")]
    assert len(finished) == 12 and finished[-1].startswith("raises: [12/12]")
    assert sum(" failed: " in line and "cifar10" in line for line in finished) == 6
    status = rethink("status", "--store", str(tmp_path / "s"))
    assert status.returncode == 0 and "failed runs" in status.stdout and "Traceback" not in status.stderr
    assert sql(tmp_path / "s", "select count(*) from runs where status = 'running'") == [(0,)]


def test_a_worker_that_dies_more_often_than_ray_retries_leaves_its_runs_failed(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SLOW_GRID.format(name="dies", epochs=40))
    store = tmp_path / "s"
    env = {**os.environ, "RETHINK_DATA": "unused", "RETHINK_TASK_RETRIES": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "rethink.cli", "submit", str(grid), "--store", str(store),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        victim = _running_worker(store, proc)
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-2000:]
    died = sql(store, "select status, stop_reason, error from runs where stop_reason = 'worker_died'")
    assert died and all(s == "failed" and e for s, _, e in died)
    assert "running" not in states(store).values()
    assert "Traceback" not in err
    resumed = rethink("resume", "dies", "--store", str(store), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert set(states(store).values()) == {"done"}
    assert sql(store, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(160, 160)]


def _running_worker(store: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of a worker once it has written a run's first rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        opened = Store.open(store) if (store / "store.json").exists() else None
        for path in (store / "runs").glob("run_id=*/status.parquet") if opened else ():
            status = opened.read_status(path.parent.name.split("=", 1)[1]) or {}
            if status.get("status") == "running" and (status.get("epochs_done") or 0) >= 1:
                return int(status["pid"])
        time.sleep(0.2)
    raise AssertionError("no worker wrote rows in time")


def test_a_damaged_claim_does_not_block_its_run(tmp_path):
    text = TINY_GRID.format(name="claims", epochs=2)
    run = parse_grid(text).runs[0]
    Store.open(tmp_path / "s", create=True)
    claim = tmp_path / "s" / RunPaths(run.run_id).claim(1)
    claim.parent.mkdir(parents=True)
    claim.write_bytes(b"\x00{not json")
    result = submit(tmp_path, text)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(states(tmp_path / "s").values()) == {"done"}
    assert Store.open(tmp_path / "s").newest_claim(run.run_id)[0] == 2


def test_done_runs_whose_rows_are_lost_are_reported_and_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_COMPACT", "0")  # it damages the runs' own files: keep them uncompacted
    store = tmp_path / "s"
    assert submit(tmp_path, TINY_GRID.format(name="lost", epochs=2)).returncode == 0
    emptied, deleted, mistyped = sorted(states(store))[:3]
    pq.write_table(pq.read_table(store / RunPaths(emptied).epochs).slice(0, 0), store / RunPaths(emptied).epochs)
    (store / RunPaths(deleted).epochs).unlink()
    rows = pq.read_table(store / RunPaths(mistyped).epochs)
    rows = rows.set_column(rows.schema.get_field_index("train_acc"), "train_acc",
                           pa.array([f"acc {v}" for v in rows["train_acc"].to_pylist()]))
    pq.write_table(rows, store / RunPaths(mistyped).epochs)

    status = rethink("status", "lost", "--store", str(store))
    assert status.returncode == 0 and "Traceback" not in status.stderr + status.stdout
    assert f"2 runs ({emptied}, {deleted}) marked done but missing" in " ".join(status.stdout.split())
    query = rethink("query", "select avg(final_train_acc) from runs", "--store", str(store))
    assert query.returncode != 0 and query.stderr.startswith("Error:") and "Traceback" not in query.stderr

    resumed = rethink("resume", "lost", "--store", str(store), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "3 done" in resumed.stdout and "trained again" in resumed.stderr
    assert set(states(store).values()) == {"done"}
    assert sql(store, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(24, 24)]
    again = rethink("status", "lost", "--store", str(store))
    assert "marked done but missing" not in again.stdout and "marked running" not in again.stdout
