"""A corrupt page in a per-run file, in a column `status` never reads: DuckDB fails with
"TProtocolException: Invalid data" and names no file, so the user could not tell which run to
train again. The one line a query ends in now names the file, the run and what to do
(storage/integrity.py), for the per-run files and the compacted parts alike."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import rethink
from rethink.storage import compact
from tests.storage.test_compact import make_store


def corrupt_column(path: Path, column: str) -> None:
    """Flip the bytes of `column`'s pages past their first third (the footer stays readable)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    for k in range(start + chunk.total_compressed_size // 3, start + chunk.total_compressed_size - 2):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compacted", [False, True])
def test_a_corrupt_page_is_named_with_its_file_and_run(tmp_path: Path, compacted: bool) -> None:
    root = tmp_path / "store"
    store = make_store(root, {"a": "done", "b": "done"})
    if compacted:
        compact.compact(store, "exp")
    path = next((root / "epochs").glob("part=*/epochs.parquet")) if compacted else root / "epochs/run_id=a/epochs.parquet"
    corrupt_column(path, "test_acc")
    reader = rethink.open_store(root)
    assert reader.sql("select count(*) as n from epochs").rows() == [{"n": 6}]  # what status reads still reads

    with pytest.raises(rethink.RethinkError) as refused:
        reader.sql("select avg(test_acc) from epochs").rows()
    message = str(refused.value)
    assert f"{path.relative_to(root)} is damaged" in message and "\n" not in message, message
    assert ("trains run a again" in message) if not compacted else ("remove the file" in message), message


def test_an_error_of_the_sql_itself_is_not_blamed_on_a_file(tmp_path: Path) -> None:
    make_store(tmp_path / "store", {"a": "done"})
    with pytest.raises(rethink.RethinkError) as refused:
        rethink.open_store(tmp_path / "store").sql("select nonsense from epochs").rows()
    assert "damaged" not in str(refused.value) and "nonsense" in str(refused.value)
