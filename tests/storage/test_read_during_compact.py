"""Readers never see a file vanish: rethink's reads (storage/reader.py, which `query`, `status`,
`report` and the Python API share) run in a loop while compactions fold runs, merge parts and
delete what they replaced, on a local folder and on the real S3 server. Every read succeeds and
counts each row exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

from rethink.storage import compact
from rethink.storage.reader import Reader
from rethink.storage.store import Store
from tests.storage.test_compact import make_store, rows_for

COUNT = "select count(*), count(distinct (run_id, epoch)), count(distinct run_id) from epochs"


def _rerun(store: Store, run_ids: list[str], attempt: int) -> None:
    """The runs trained again (same rows): their own files come back, for the next compaction."""
    for run_id in run_ids:
        store.write_epochs(run_id, rows_for(run_id, 3, 0.1))
        store.write_status(run_id, status="done", attempts=attempt, epochs_done=3)


def _race(uri: str, runs: int, rounds: int) -> tuple[int, list]:
    store = make_store(uri, {f"r{i:03d}": "done" for i in range(runs)})
    expected = [(runs * 3, runs * 3, runs)]
    stop, reads, wrong = threading.Event(), [0], []

    def read() -> None:
        while not stop.is_set():
            try:
                got = Reader.open(uri).run(lambda con: con.execute(COUNT).fetchall())
            except Exception as exc:  # noqa: BLE001 - the failure under test
                wrong.append(f"{type(exc).__name__}: {exc}")
                continue
            reads[0] += 1
            if got != expected:
                wrong.append(got)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for round_ in range(rounds):
            compact.compact(Store.open(uri), "exp")
            _rerun(store, [f"r{i:03d}" for i in range(round_ % 3, runs, 3)], round_ + 2)
        compact.compact(Store.open(uri), "exp")
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    return reads[0], wrong


def test_reads_during_compactions_never_fail_and_count_each_row_once(tmp_path: Path) -> None:
    reads, wrong = _race(str(tmp_path / "s"), runs=60, rounds=6)
    assert reads > 5 and not wrong, (reads, wrong[:5])


def test_on_s3_reads_during_compactions_never_fail(s3_store: str) -> None:
    reads, wrong = _race(s3_store, runs=30, rounds=4)
    assert reads > 5 and not wrong, (reads, wrong[:5])


def test_a_streamed_result_that_a_compaction_ran_under_says_to_run_it_again(tmp_path: Path, monkeypatch) -> None:
    from rethink.storage import layout, query, retired
    from rethink.storage.errors import QueryError
    from rethink.storage.query import run_query

    monkeypatch.setattr(query, "BATCH_ROWS", 1)  # rows printed before the stream ends
    monkeypatch.setattr(query, "HOLD_CHARS", 1)
    uri = str(tmp_path / "s")
    store = make_store(uri, {"a": "done", "b": "done"})
    printed: list[str] = []

    def echo(chunk: str) -> None:  # a compaction finishes while the rows are printed
        printed.append(chunk)
        store.write(layout.PARTS_MARKER, retired.new_marker("20260101T000000000000Z-00000000"))

    try:
        run_query(uri, "select run_id, epoch from epochs order by all", fmt="csv", echo=echo)
    except QueryError as exc:
        assert "run the query again" in str(exc) and printed
    else:
        raise AssertionError("a result printed while a compaction replaced files was not flagged")
    # not streamed: run again, quietly, with every row once
    calls = []

    def work(con):
        calls.append(1)
        if len(calls) == 1:
            store.write(layout.PARTS_MARKER, retired.new_marker("20260101T000000000001Z-00000000"))
        return con.execute(COUNT).fetchall()

    assert Reader.open(uri).run(work) == [(6, 6, 2)] and len(calls) == 2


def test_a_short_streamed_result_that_a_compaction_ran_under_is_run_again_and_printed_once(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    """A result that ends within what `_stream` holds back is printed only once the read is known
    good: a compaction finishing under it reruns it quietly (it used to fail `rethink query`)."""
    from rethink.storage import layout, query, retired

    uri = str(tmp_path / "s")
    store = make_store(uri, {"a": "done", "b": "done"})
    first, calls = query._run_once, []

    def run_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # a compaction finishes while the first attempt reads
            store.write(layout.PARTS_MARKER, retired.new_marker("20260101T000000000002Z-00000000"))
        return first(*args, **kwargs)

    monkeypatch.setattr(query, "_run_once", run_once)
    printed: list[str] = []
    assert query.run_query(uri, COUNT, fmt="csv", echo=printed.append) is None
    assert len(calls) == 2 and "".join(printed).splitlines()[1:] == ["6,6,2"], printed
