"""`rethink compact` and the driver's compaction at the end of a grid, through the real command in
its own process: a submit leaves parts and no per-run epoch files, status and query stay true, a
resume afterwards changes nothing; bad input is one line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from rethink.storage.store import Store
from tests.runner.conftest import TINY_GRID, rethink, sql
from tests.storage.test_compact import make_store, plain_counts


def parquet_fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.parquet")}


def test_submit_compacts_its_runs_and_resume_afterwards_changes_nothing(tmp_path):
    store = tmp_path / "s"
    grid = tmp_path / "grid.yaml"
    grid.write_text(TINY_GRID.format(name="folded", epochs=2))
    submitted = rethink("submit", str(grid), "--store", str(store), "--quiet")
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    assert "warning" not in submitted.stderr
    assert not list(store.glob("epochs/run_id=*/epochs.parquet")) and not list(store.glob("runs/run_id=*/status.parquet"))
    assert len(list(store.glob("epochs/part=*/epochs.parquet"))) == 1
    assert len(list(store.glob("runs/part=*/status.parquet"))) == 1
    assert sql(store, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(24, 24)]
    assert sql(store, "select status, count(*), sum(epoch_rows) from runs group by all") == [("done", 12, 24)]
    assert plain_counts(store) == {(24, 24)}
    status = rethink("status", "folded", "--store", str(store))
    assert status.returncode == 0 and "note:" not in status.stdout + status.stderr
    before = parquet_fingerprint(store)

    resumed = rethink("resume", "folded", "--store", str(store), "--quiet")

    assert resumed.returncode == 0 and "0 done, 0 failed, 12 already done" in resumed.stdout, resumed.stderr
    assert parquet_fingerprint(store) == before
    again = rethink("compact", "folded", "--store", str(store))
    assert again.returncode == 0 and again.stdout.strip() == "folded: nothing to compact"
    assert parquet_fingerprint(store) == before


def test_compact_folds_a_store_written_without_it_and_imports_no_torch_or_ray(tmp_path):
    root = tmp_path / "s"
    make_store(root, {"a": "done", "b": "failed", "c": "running"})
    code = ("import sys\nfrom rethink.cli import main\nsys.argv = ['rethink', 'compact', 'exp', '--store', "
            f"{str(root)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "[]", done.stderr
    assert lines[0].startswith("exp: folded 2 runs (6 epoch rows) into part ")
    assert lines[0].endswith("epochs and status files 6 → 4; 1 run unfinished or running left as they are")
    assert sql(root, "select count(*), count(distinct (run_id, epoch)) from epochs") == [(9, 9)]


def test_compact_bad_input_is_one_line(tmp_path):
    make_store(tmp_path / "s", {"a": "done"})
    cases = [
        (["compact", "Bad/Name", "--store", str(tmp_path / "s")], "Error: name must match"),
        (["compact", "exp", "--store", str(tmp_path / "nowhere")], "is not a rethink store"),
        (["compact", "other", "--store", str(tmp_path / "s")], "Error: no experiment 'other' in store"),
    ]
    for args, message in cases:
        result = rethink(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    lock = tmp_path / "s" / "compaction" / "lock=0001.json"
    lock.parent.mkdir()
    lock.write_text(f'{{"host": "{os.uname().nodename}", "pid": {os.getpid()}, "at": "now"}}')
    busy = rethink("compact", "exp", "--store", str(tmp_path / "s"))
    assert busy.returncode == 1 and busy.stderr.startswith("Error: another compaction of store")
    assert Store.open(tmp_path / "s").epoch_rows("a") == 3
