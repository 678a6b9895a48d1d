"""`rethink status` and `rethink query` import pyarrow without numpy (storage/arrow_import.py):
pyarrow still reads and writes Parquet, numpy stays importable for the rest of the process, and
both commands print the same (query: in every format, every kind of value) as a process in which
numpy was loaded first. Each check runs in a fresh interpreter:
this one has numpy loaded already."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest


ROUND_TRIP = """
import sys
from rethink.storage.arrow_import import import_pyarrow_without_numpy
assert import_pyarrow_without_numpy() is True
assert "numpy" not in sys.modules
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"x": [1, 2, 3]}), sys.argv[1])
assert pq.read_table(sys.argv[1]).column("x").to_pylist() == [1, 2, 3]
import numpy  # still importable for everything else (pyarrow itself may load it later, lazily)
assert numpy.arange(3).sum() == 3
assert import_pyarrow_without_numpy() is False  # pyarrow is imported: nothing to do
print("ok")
"""

COMMAND = """
import atexit, sys
from rethink.cli import app
if sys.argv[1] == "numpy-first":
    import numpy
atexit.register(lambda: print("numpy imported:", "numpy" in sys.modules))
sys.argv = ["rethink", *sys.argv[2:]]
app()
"""
# DuckDB's many types, as `rethink query` hands them on through Arrow
TYPES_SQL = ("select run_id, epoch, train_acc, 12345678901234567890::HUGEINT as huge, 1.25::DECIMAL(9, 3) as dec, "
             "[epoch, epoch + 1] as list, {'a': epoch, 'b': run_id} as struct, INTERVAL 3 DAY as span, "
             "TIMESTAMP '2026-12-03 10:00:00' + to_seconds(epoch) as at, DATE '2026-12-03' as day, "
             "uuid() is not null as has_uuid, NULL::VARCHAR as nothing, 'x'::BLOB as raw, "
             "TIMESTAMP '12000-01-01' as beyond_python "  # no datetime holds it: Arrow's text
             "from epochs order by run_id, epoch")


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": ""})


def test_pyarrow_without_numpy_reads_and_writes_parquet_and_leaves_numpy_importable(tmp_path):
    result = python(ROUND_TRIP, str(tmp_path / "x.parquet"))
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    assert pq.read_table(tmp_path / "x.parquet").num_rows == 3


def lean_and_full(*args: str, numpy_later: bool = False) -> tuple[list[str], list[str]]:
    """stdout lines of `rethink ARGS` as the CLI runs it (pyarrow without numpy) and with numpy
    loaded first, having checked which process loaded numpy (`numpy_later`: pyarrow may load it
    itself, lazily, as pyarrow.compute does)."""
    lean, full = python(COMMAND, "lean", *args), python(COMMAND, "numpy-first", *args)
    assert lean.returncode == full.returncode == 0, lean.stderr + full.stderr
    assert numpy_later or lean.stdout.splitlines()[-1] == "numpy imported: False"
    assert full.stdout.splitlines()[-1] == "numpy imported: True"
    return lean.stdout.splitlines()[:-1], full.stdout.splitlines()[:-1]


def test_status_loads_no_numpy_and_prints_what_it_prints_with_numpy(store):
    lean, full = lean_and_full("status", "--store", str(store))
    assert lean == full
    assert "failed runs" in "\n".join(lean) and "r3" in "\n".join(lean)  # the tables, not an error line


def test_query_loads_no_numpy(store):
    lean, full = lean_and_full("query", "select run_id, avg(train_acc) from epochs group by all order by 1",
                               "--store", str(store))
    assert lean == full and len(lean) == 5  # header, rule, 3 runs with epochs


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_query_of_every_kind_of_value_gives_what_it_gives_with_numpy(store, tmp_path, fmt):
    outs = {kind: tmp_path / f"{kind}.parquet" for kind in ("lean", "full")}
    sql = TYPES_SQL.replace("INTERVAL 3 DAY as span, ", "") if fmt == "parquet" else TYPES_SQL  # Parquet has none
    args = ["query", sql, "--store", str(store), "--format", fmt]
    if fmt == "parquet":
        lean, full = (python(COMMAND, kind, *args, "--out", str(outs[kind])) for kind in ("lean", "full"))
        assert lean.returncode == full.returncode == 0, lean.stderr + full.stderr
        assert pq.read_table(outs["lean"]).equals(pq.read_table(outs["full"]))
        assert pq.read_table(outs["lean"]).num_rows == 9
        return
    lean, full = lean_and_full(*args, numpy_later=True)
    assert lean == full
    assert len(lean) > 9 and "12345678901234567890" in "\n".join(lean) and "12000-01-01" in "\n".join(lean)
