"""A compacted part whose footer cannot be read (truncated, empty, its run list gone) is damage
the views must refuse in one line, never count around: they used to drop such a part from
their sources silently, so `query`, `report` and the Python API gave short counts (0 rows of a
fully trained grid) with exit 0. Status still counts from the status files and names the runs
whose rows went with it; resume trains them again (it reads the same listing)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import rethink
from rethink.runner.status import status_tables
from rethink.storage import compact
from rethink.storage.store import Store
from rethink.text import one_line
from tests.storage.test_compact import make_store


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _no_run_list(path: Path) -> None:
    table = pq.read_table(path)
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"rethink.runs"}
    pq.write_table(table.replace_schema_metadata(meta), path)


def _run_list_not_json(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"rethink.runs": b"{not json"}), path)


@pytest.mark.parametrize("damage", [_truncate, _empty, _no_run_list, _run_list_not_json])
def test_a_part_that_cannot_be_read_is_refused_not_counted_around(tmp_path: Path, damage) -> None:
    root = tmp_path / "store"
    store = make_store(root, {"a": "done", "b": "done"})
    compact.compact(store, "exp")
    part = next((root / "epochs").glob("part=*/epochs.parquet"))
    damage(part)
    relative = str(part.relative_to(root))

    with pytest.raises(rethink.RethinkError) as refused:
        rethink.open_store(root).sql("select count(*) from epochs").rows()
    message = str(refused.value)
    assert relative in message and "damaged" in message and "\n" not in message and "resume" in message

    notes = [one_line(t.plain) for t in status_tables(str(root)) if hasattr(t, "plain")]
    assert any(relative in note for note in notes), notes
    assert {run for run in "ab" if any(f"run {run} damaged" in note for note in notes)} == {"a", "b"}, notes


def test_an_intact_part_still_reads(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = make_store(root, {"a": "done", "b": "done"})
    compact.compact(store, "exp")
    rows = rethink.open_store(root).sql("select count(*) as n, count(distinct (run_id, epoch)) as d from epochs").rows()
    assert rows == [{"n": 6, "d": 6}]
    assert json.loads(pq.ParquetFile(next((root / "epochs").glob("part=*/epochs.parquet"))).schema_arrow
                      .metadata[b"rethink.runs"]) == {"a": 3, "b": 3}
    assert Store.open(root).read_epochs("a")
