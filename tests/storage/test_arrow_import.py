"""`rethink status` imports pyarrow without numpy (storage/arrow_import.py): pyarrow still reads
and writes Parquet, numpy stays importable for the rest of the process, and status prints the
same tables as a process in which numpy was loaded first. Each check runs in a fresh interpreter:
this one has numpy loaded already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq


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

STATUS = """
import atexit, sys
from rethink.cli import app
if sys.argv[1] == "numpy-first":
    import numpy
atexit.register(lambda: print("numpy imported:", "numpy" in sys.modules))
sys.argv = ["rethink", "status", "--store", sys.argv[2]]
app()
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": ""})


def test_pyarrow_without_numpy_reads_and_writes_parquet_and_leaves_numpy_importable(tmp_path):
    result = python(ROUND_TRIP, str(tmp_path / "x.parquet"))
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    assert pq.read_table(tmp_path / "x.parquet").num_rows == 3


def test_status_loads_no_numpy_and_prints_what_it_prints_with_numpy(store):
    lean, full = python(STATUS, "lean", str(store)), python(STATUS, "numpy-first", str(store))
    assert lean.returncode == full.returncode == 0, lean.stderr + full.stderr
    assert lean.stdout.splitlines()[-1] == "numpy imported: False"
    assert full.stdout.splitlines()[-1] == "numpy imported: True"
    assert lean.stdout.splitlines()[:-1] == full.stdout.splitlines()[:-1]
    assert "failed runs" in lean.stdout and "r3" in lean.stdout  # the tables themselves, not an error line
