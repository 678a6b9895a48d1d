"""Every command on an S3 store, through the real CLI in its own processes, as on a local folder:
submit, cancel while it trains, status, resume to the end, query, compact, report, the Python
API. The store is a bucket of the real SeaweedFS server (tests/s3server.py)."""

from __future__ import annotations

import time
from pathlib import Path

import rethink
from rethink.runner.grid import parse_grid
from rethink.storage.store import Store, StoreError
from tests.runner.conftest import SLOW_GRID, popen_rethink, rethink as run_rethink

EPOCHS = 8


def wait_for_an_epoch(uri: str, run_ids: list[str], proc, seconds: float = 180) -> Store:
    """The store, once one of its runs has trained an epoch (submit makes the store first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            store = Store.open(uri)
        except StoreError:  # not made yet
            time.sleep(0.2)
            continue
        if any((store.read_status(run_id) or {}).get("epochs_done") for run_id in run_ids):
            return store
        time.sleep(0.2)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    raise AssertionError(f"no epoch trained within {seconds} s: {out[-1000:]} {err[-2000:]}")


def test_submit_cancel_status_resume_query_compact_report_on_s3(s3_store: str, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(SLOW_GRID.format(name="s3-all", epochs=EPOCHS))
    submit = popen_rethink("submit", str(grid), "--store", s3_store, "--quiet")
    try:
        runs = [run.run_id for run in parse_grid(grid.read_text()).runs]
        store = wait_for_an_epoch(s3_store, runs, submit)
        cancel = run_rethink("cancel", "s3-all", "--store", s3_store)
        assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, cancel.stderr
        out, err = submit.communicate(timeout=180)
    finally:
        if submit.poll() is None:
            submit.kill()
    assert "cancelled; `rethink resume s3-all` finishes it" in out, out + err[-2000:]

    status = run_rethink("status", "s3-all", "--store", s3_store)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    states = {row["status"]: row["n"] for row in
              rethink.open_store(s3_store).sql("select status, count(*) as n from runs group by all").rows()}
    assert states.get("done", 0) < len(runs) and "running" not in states, states

    resume = run_rethink("resume", "s3-all", "--store", s3_store, "--quiet")
    assert resume.returncode == 0 and "0 failed" in resume.stdout, resume.stdout + resume.stderr[-2000:]
    count = run_rethink("query", "select count(*), count(distinct (run_id, epoch)), count(distinct run_id) from epochs",
                        "--store", s3_store, "--format", "csv")
    assert count.returncode == 0 and count.stdout.splitlines()[-1] == f"{len(runs) * EPOCHS},{len(runs) * EPOCHS},{len(runs)}"
    status = run_rethink("status", "s3-all", "--store", s3_store)
    assert f"{len(runs) * EPOCHS}/{len(runs) * EPOCHS}" in status.stdout, status.stdout

    compact = run_rethink("compact", "s3-all", "--store", s3_store)  # resume compacted at its end
    assert compact.returncode == 0 and compact.stdout.strip() == "s3-all: nothing to compact", compact.stdout
    assert not [name for name in store.listdir("epochs") if name.startswith("run_id=")
                if store.listdir(f"epochs/{name}")]  # every run's rows are in parts now

    report = run_rethink("report", "s3-all", "--store", s3_store, "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
    rows = rethink.open_store(s3_store).runs("s3-all").rows()  # the Python API
    assert sorted(row["run_id"] for row in rows) == sorted(runs) and {row["status"] for row in rows} == {"done"}
