"""A status row rethink never writes (a state outside pending/running/done/failed, a negative
attempt count) fell in no column of `rethink status` and was noted nowhere: the counts did
not add up to the total and nothing said why. It is now noted, naming the run; resume trains
it again (it is not done)."""

from __future__ import annotations

from pathlib import Path

from rethink.runner.status import status_tables
from tests.storage.test_compact import make_store


def test_a_status_rethink_never_writes_is_noted_naming_the_run(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"a": "weird", "b": "done", "c": "done"})
    store.write_status("c", status="done", attempts=-3, epochs_done=3)
    notes = " ".join(" ".join(t.plain.split()) for t in status_tables(store.uri) if hasattr(t, "plain"))
    assert "2 runs (a, c) damaged: a status file holds a state" in notes, notes
