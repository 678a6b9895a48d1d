"""Store files are read within limits fitted to what rethink writes (storage/limits.py): a sparse
40 GB claim or checkpoint and a five-million-row runs.parquet that compresses to almost nothing
are refused from their size or footer, in one line, fast, never with a MemoryError."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rethink.runner.grid import parse_grid, run_row
from rethink.storage import limits
from rethink.storage.layout import ExperimentPaths, RunPaths
from rethink.storage.store import DamagedFileError, Store

GRID = "name: big\ndataset: synthetic\ndata: {train_size: 64, test_size: 32, image_size: 8}\nmodel: mlp1x512\n" \
       "width: 0.05\nseed: 0\ntrain: {epochs: 1, batch_size: 32}\nresources: {cpus: 1, gpus: 0}\n"
SPARSE = 40 << 30


@pytest.fixture
def store(tmp_path: Path) -> Store:
    grid = parse_grid(GRID)
    store = Store.open(tmp_path / "s", create=True)
    store.save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    return store


@pytest.fixture
def sparse(store: Store):
    """Make a sparse 40 GB file at a store path (no block of it written); deleted after."""
    made: list[Path] = []

    def make(relative: str) -> Path:
        path = Path(store.root, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(SPARSE)
        made.append(path)
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def rethink(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RETHINK_DATA": "unused", "RETHINK_COMPACT": "0"}
    return subprocess.run([sys.executable, "-m", "rethink.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_every_read_checks_the_size_first(store: Store, sparse) -> None:
    """The root: Store.read refuses a file past its kind's limit before reading a byte of it;
    the line names the file, its size, the limit and (checkpoints) the variable that raises it."""
    run_id = store.experiment_rows("big")[0]["run_id"]
    sparse(RunPaths(run_id).checkpoint(1))
    started = time.monotonic()
    with pytest.raises(DamagedFileError, match=rf"^checkpoints/run_id={run_id}/epoch=0001.ckpt holds "
                                               rf"{SPARSE:,} bytes, more than the {limits.MAX_CHECKPOINT_BYTES:,} "
                                               rf".*raise RETHINK_MAX_CHECKPOINT_BYTES"):
        store.read_checkpoint(run_id, 1)
    sparse(RunPaths(run_id).claim(1))
    assert store.newest_claim(run_id) == (1, {})  # a claim past its limit is damaged: nobody holds the run
    assert store.claim_holder(run_id) is None
    assert time.monotonic() - started < 1


def test_a_sparse_claim_and_checkpoint_through_status_and_resume(store: Store, sparse) -> None:
    run_id = store.experiment_rows("big")[0]["run_id"]
    store.write_status(run_id, status="running", attempts=1)
    sparse(RunPaths(run_id).claim(1))
    done = rethink("status", "big", "--store", store.uri)
    assert done.returncode == 0 and "Error" not in done.stderr and "MemoryError" not in done.stderr, done.stderr
    store.write_status(run_id, status="failed", stop_reason="error", error="x")
    sparse(RunPaths(run_id).checkpoint(1))
    done = rethink("resume", "big", "--store", store.uri, "--quiet")
    assert done.returncode != 0 and "Traceback" not in done.stderr and "MemoryError" not in done.stderr, done.stderr
    assert f"epoch=0001.ckpt holds {SPARSE:,} bytes" in done.stderr and "RETHINK_MAX_CHECKPOINT_BYTES" in done.stderr
    assert f"epoch=0001.ckpt holds {SPARSE:,} bytes" in store.read_status(run_id)["error"]  # status shows it


def test_a_run_list_of_five_million_rows_is_refused_from_its_footer(store: Store) -> None:
    """One repeated value, dictionary-encoded: under a megabyte on disk, gigabytes decoded."""
    row = store.experiment_rows("big")[0]
    n = 5_000_000
    zeros = pa.array([0] * n, pa.int32())
    columns = [pa.nulls(n, f.type) if row[f.name] is None
               else pa.DictionaryArray.from_arrays(zeros, pa.array([row[f.name]], f.type)) for f in store_schema()]
    path = Path(store.root, ExperimentPaths("big").runs)
    pq.write_table(pa.Table.from_arrays(columns, names=[f.name for f in store_schema()]), path)
    assert path.stat().st_size < 2 << 20
    said = (f"experiments/name=big/runs.parquet holds {n:,} rows, more than the {limits.MAX_GRID_RUNS:,} "
            "rethink reads for such a file")
    for args in (["status", "big"], ["compact", "big"], ["resume", "big", "--quiet"]):
        started = time.monotonic()
        done = rethink(*args, "--store", store.uri)
        out = done.stdout + done.stderr
        assert "Traceback" not in out and "MemoryError" not in out, out
        assert said in " ".join(out.split()), (args, out)  # an error line, or status's note on the damage
        assert time.monotonic() - started < 30


def store_schema() -> pa.Schema:
    from rethink.storage import schema

    return schema.EXPERIMENT_RUNS
