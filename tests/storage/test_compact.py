"""Compaction on real files, read back through rethink's DuckDB views and the README's plain
readers (DuckDB, pandas, polars): folded runs, a run re-run after compaction, and a compaction
killed after every step of its protocol, then finished by the next one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas
import polars
import pyarrow.parquet as pq
import pytest

from rethink.storage import compact, layout, parts
from rethink.storage.store import Store
from rethink.storage.views import connect

STEPS = ["locked", "read", "epochs_part", "status_part", "recorded", "marker", "parts_deleted", "run_epochs_deleted",
         "run_status_deleted", "run_deleted", "runs_deleted"]


def rows_for(run_id: str, epochs: int, acc: float) -> list[dict]:
    return [{"run_id": run_id, "epoch": e, "step": 10 * e, "train_acc": acc, "test_acc": acc / 2}
            for e in range(1, epochs + 1)]


def make_store(root: Path, states: dict[str, str], epochs: int = 3, name: str = "exp") -> Store:
    """Experiment `name` with one run per entry of `states` (run_id: status); every run but the
    pending ones has `epochs` rows, with train_acc 0.1 (old rows, to tell from re-runs)."""
    store = Store.open(root, create=True)
    store.save_experiment(name, f"name: {name}\n", [{"experiment": name, "run_id": r, "epochs": epochs}
                                                   for r in states])
    for run_id, state in states.items():
        if state != "pending":
            store.write_epochs(run_id, rows_for(run_id, epochs, 0.1))
            store.write_status(run_id, status=state, attempts=1, epochs_done=epochs)
    return store


def views(root: Path) -> tuple[list, list, list]:
    """(count and distinct (run_id, epoch) of `epochs`, every epoch row, every runs row), via DuckDB."""
    con = connect(str(root))
    count = con.execute("select count(*), count(distinct (run_id, epoch)) from epochs").fetchall()
    rows = con.execute("select run_id, epoch, train_acc from epochs order by all").fetchall()
    runs = con.execute("select run_id, status, attempts, epochs_done, epoch_rows from runs order by all").fetchall()
    return count, rows, runs


def plain_counts(root: Path) -> set[tuple[int, int]]:
    """(rows, distinct (run_id, epoch)) as the README's three plain readers see `epochs`."""
    got = set()
    con = duckdb.connect()
    got.add(con.execute(f"select count(*), count(distinct (run_id, epoch)) from read_parquet("
                        f"'{root}/epochs/*/*.parquet', hive_partitioning=false)").fetchone())
    frame = pandas.read_parquet(root / "epochs", partitioning=None)
    got.add((len(frame), len(frame.drop_duplicates(["run_id", "epoch"]))))
    frame = polars.read_parquet(f"{root}/epochs/*/*.parquet")
    got.add((frame.height, frame.select(["run_id", "epoch"]).unique().height))
    return got


def per_run_files(root: Path, table: str = "epochs") -> list[str]:
    folder, name = layout.TABLE_FILES[table]
    return sorted(p.parent.name for p in (root / folder).glob(f"run_id=*/{name}"))


def part_files(root: Path, table: str = "epochs") -> list[Path]:
    folder, name = layout.TABLE_FILES[table]
    return sorted((root / folder).glob(f"part=*/{name}"))


def test_compaction_folds_finished_runs_and_every_reader_sees_each_row_once(tmp_path):
    root = tmp_path / "s"
    states = {f"d{i}": "done" for i in range(6)} | {"f0": "failed", "c0": "done", "r0": "running",
                                                     "p0": "pending"}
    store = make_store(root, states)
    store.write_status("c0", status="pending", stop_reason="cancelled")  # cancelled: finished for now
    before = views(root)
    assert before[0] == [(27, 27)]

    result = compact.compact(Store.open(root), "exp")

    assert (result.runs, result.rows, result.merged, result.skipped) == (8, 24, 0, 1)
    assert (result.files_before, result.files_after) == (18, 4)
    assert per_run_files(root) == ["run_id=r0"] and per_run_files(root, "status") == ["run_id=r0"]
    assert views(root) == before
    assert plain_counts(root) == {(27, 27)}
    footer = pq.read_metadata(part_files(root)[0]).metadata[parts.RUNS_KEY]
    assert json.loads(footer) == {r: 3 for r in states if r not in ("r0", "p0")}
    assert not any(root.glob("epochs/run_id=d0"))  # its emptied folder went too
    # the Store's own reads fall back to the part, for the scheduler and resume
    fresh = Store.open(root)
    assert fresh.read_status("d0")["status"] == "done" and fresh.epoch_rows("d0") == 3
    assert [r["train_acc"] for r in fresh.read_epochs("f0")] == [0.1] * 3
    assert fresh.read_status("p0") is None and fresh.read_epochs("p0") == [] and fresh.epoch_rows("p0") is None
    again = compact.compact(Store.open(root), "exp")
    assert again.gen is None and again.line() == "exp: nothing to compact (1 run unfinished or running)"


def test_a_run_re_run_after_compaction_is_read_once_then_folded_again(tmp_path):
    root = tmp_path / "s"
    store = make_store(root, {"a": "done", "b": "done", "c": "failed"})
    compact.compact(store, "exp")
    old_part = part_files(root)[0]
    # resumed: new rows (fewer, different) in its own file and a new status: they win
    store.write_epochs("c", rows_for("c", 2, 0.9))
    store.write_status("c", status="done", attempts=2, epochs_done=2)
    assert parts.sources(Store.open(root), "epochs")[0].exclude == {"c"}
    count, rows, runs = views(root)
    assert count == [(8, 8)] and [r for r in rows if r[0] == "c"] == [("c", 1, 0.9), ("c", 2, 0.9)]
    assert ("c", "done", 2, 2, 2) in runs
    assert Store.open(root).read_status("c")["attempts"] == 2

    result = compact.compact(Store.open(root), "exp")

    assert (result.runs, result.merged) == (1, 1) and not old_part.exists()
    assert len(part_files(root)) == 1 and per_run_files(root) == []
    assert views(root) == (count, rows, runs)
    assert plain_counts(root) == {(8, 8)}
    assert pq.read_table(part_files(root)[0], filters=[("run_id", "=", "c")])["train_acc"].to_pylist() == [0.9, 0.9]


def test_size_tiers_merge_small_parts_and_leave_a_big_one(tmp_path):
    root = tmp_path / "s"
    make_store(root, {f"big{i}": "done" for i in range(10)}, name="big")
    compact.compact(Store.open(root), "big")
    for name in ("one", "two"):
        make_store(root, {f"{name}0": "done"}, name=name)
        compact.compact(Store.open(root), name)
    # the 3-row parts merged with each other, never with the 30-row one
    assert sorted(sum(parts.read_footer(Store.open(root), str(p.relative_to(root))).values())
                  for p in part_files(root)) == [6, 30]
    assert views(root)[0] == [(36, 36)] and plain_counts(root) == {(36, 36)}


def test_a_run_held_by_a_live_attempt_is_not_folded(tmp_path):
    root = tmp_path / "s"
    store = make_store(root, {"a": "done", "b": "done"})
    assert store.claim("b", "token") == 1  # a live claim of this process: a resume is training it
    result = compact.compact(store, "exp")
    assert (result.runs, result.skipped) == (1, 1) and per_run_files(root) == ["run_id=b"]


def test_a_file_rewritten_after_it_was_read_is_kept(tmp_path):
    root = tmp_path / "s"
    store = make_store(root, {"a": "done"})
    relative = layout.RunPaths("a").epochs
    ident = compact._ident(store, relative)
    store.write_epochs("a", rows_for("a", 3, 0.7))  # a resumed attempt wrote again
    assert compact._delete_if_same(store, relative, ident) is False
    assert pq.read_table(root / relative)["train_acc"].to_pylist() == [0.7] * 3
    assert compact._delete_if_same(store, relative, compact._ident(store, relative)) is True
    assert not (root / relative).exists() and not list((root / relative).parent.glob(".*"))


def test_a_live_compaction_lock_refuses_a_second_and_a_dead_ones_is_taken_over(tmp_path):
    root = tmp_path / "s"
    store = make_store(root, {"a": "done"})
    lock = root / layout.compact_lock(1)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "at": "now"}))
    with pytest.raises(compact.CompactionBusy, match=f"pid {os.getpid()}"):
        compact.compact(store, "exp")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "at": "then"}))
    assert compact.compact(store, "exp").runs == 1
    assert list(lock.parent.glob("lock=*")) == []  # released: its lock and the dead one's are gone


@pytest.fixture(scope="module")
def half_compacted(tmp_path_factory) -> tuple[Path, tuple]:
    """A store mid-life: runs compacted once, then one of them re-run with new rows, two new runs
    finished and one still running; and what its views say."""
    root = tmp_path_factory.mktemp("template") / "s"
    store = make_store(root, {"a": "done", "b": "done", "c": "failed", "r": "running"})
    compact.compact(store, "exp")
    store.write_epochs("c", rows_for("c", 2, 0.9))
    store.write_status("c", status="done", attempts=2, epochs_done=2)
    store.save_experiment("exp2", "name: exp2\n", [{"experiment": "exp2", "run_id": r, "epochs": 3}
                                                   for r in ("x", "y")])
    for run_id in ("x", "y"):
        store.write_epochs(run_id, rows_for(run_id, 3, 0.5))
        store.write_status(run_id, status="done", attempts=1, epochs_done=3)
    return root, views(root)


KILL = """
import sys
from rethink.storage.compact import compact
from rethink.storage.store import Store
compact(Store.open(sys.argv[1]), sys.argv[2])
"""


@pytest.mark.parametrize("experiment", ["exp", "exp2"])
def test_a_compaction_killed_after_any_step_leaves_views_exact_and_the_next_finishes(
        tmp_path, half_compacted, experiment):
    template, expected = half_compacted
    assert expected[0] == [(17, 17)]
    for step in STEPS:
        root = tmp_path / step
        shutil.copytree(template, root)
        killed = subprocess.run([sys.executable, "-c", KILL, str(root), experiment], capture_output=True,
                                text=True, env={**os.environ, compact.STOP_ENV: step}, timeout=60)
        assert killed.returncode == 77, (step, killed.stderr[-2000:])
        assert views(root) == expected, step
        Store.open(root)  # still a store
        compact.compact(Store.open(root), experiment)
        assert views(root) == expected, step
        assert plain_counts(root) == {(17, 17)}, step
        assert not list(root.glob("compaction/lock=*")), step
        held = [run for p in part_files(root) for run in parts.read_footer(Store.open(root),
                                                                           str(p.relative_to(root)))]
        assert len(held) == len(set(held)), (step, held)  # no run in two parts
