"""Compaction on the real S3 server: killed after every step of its protocol, rethink's views
still count each row once and the next compaction finishes, as on a local disk
(tests/storage/test_compact.py), where deleting a run's file is checked by its size, time and
claim instead of a rename."""

from __future__ import annotations

import os
import subprocess
import sys

from rethink.storage import compact
from rethink.storage.store import Store
from tests.storage.test_compact import KILL, STEPS, make_store, rows_for, views


def half_compacted(uri: str) -> Store:
    """As test_compact's fixture: compacted once, a run re-run with new rows, two new runs of a
    second experiment, one run still running."""
    store = make_store(uri, {"a": "done", "b": "done", "c": "failed", "r": "running"})
    compact.compact(store, "exp")
    store.write_epochs("c", rows_for("c", 2, 0.9))
    store.write_status("c", status="done", attempts=2, epochs_done=2)
    for run_id in ("x", "y"):
        store.write_epochs(run_id, rows_for(run_id, 3, 0.5))
        store.write_status(run_id, status="done", attempts=1, epochs_done=3)
    store.save_experiment("exp2", "name: exp2\n", [{"experiment": "exp2", "run_id": r, "epochs": 3}
                                                   for r in ("x", "y")])
    return store


def test_on_s3_a_compaction_killed_after_any_step_leaves_views_exact(s3_store, s3_server):
    expected = None
    for step in STEPS:
        uri = s3_store if expected is None else s3_server.uri(s3_server.new_bucket())
        half_compacted(uri)
        before = views(uri)
        expected = expected or before
        assert before == expected and expected[0] == [(17, 17)]
        killed = subprocess.run([sys.executable, "-c", KILL, uri, "exp2"], capture_output=True, text=True,
                                env={**os.environ, compact.STOP_ENV: step}, timeout=120)
        assert killed.returncode == 77, (step, killed.stderr[-2000:])
        assert views(uri) == expected, step
        store = Store.open(uri)
        compact.compact(store, "exp2")
        assert views(uri) == expected, step
        assert not [n for n in store.listdir("compaction") if n.startswith("lock=")], step
        # folded: their own files are gone (SeaweedFS, filer-backed, still lists their empty folders)
        assert not [r for r in ("x", "y") if store.exists(f"epochs/run_id={r}/epochs.parquet")], step
        assert not [r for r in ("x", "y") if store.exists(f"runs/run_id={r}/status.parquet")], step
