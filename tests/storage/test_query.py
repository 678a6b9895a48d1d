"""`run_query`: formats, output files, and a store left byte-for-byte as it was by any query."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rethink.errors import RethinkError
from rethink.storage import layout, schema
from rethink.storage.errors import QueryError, ReadOnlyError
from rethink.storage.query import run_query

from .conftest import CURVES, epoch_rows, fingerprint, write_table

SUMMARY = ("SELECT corruption, level, count(*) AS runs, avg(final_test_acc) AS test_acc, "
           "avg(epochs_to_fit) AS epochs_to_fit FROM runs GROUP BY ALL ORDER BY ALL")


def test_table_is_aligned_with_column_names_and_null(store: Path) -> None:
    text = run_query(str(store), SUMMARY)
    lines = text.splitlines()
    assert lines[0].split() == ["corruption", "level", "runs", "test_acc", "epochs_to_fit"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + 4  # gaussian (two experiments, no level), labels 0.0 and 1.0, shuffled_pixels
    assert lines[2].split() == ["gaussian", "NULL", "2", "NULL", "NULL"]
    assert lines[3].split() == ["labels", "0.0", "1", "0.62", "3.0"]
    assert lines[2].index("NULL") + len("NULL") == lines[0].index("level") + len("level")  # numbers right-aligned


def test_table_shows_at_most_a_thousand_rows_and_says_so(store: Path) -> None:
    lines = run_query(str(store), "SELECT * FROM range(1500)").splitlines()
    assert len(lines) == 2 + 1000 + 1
    assert lines[-1] == "(1,000 of 1,500 rows shown; --format csv or --out FILE gives them all)"


def test_csv_has_a_header_and_plain_values(store: Path) -> None:
    text = run_query(str(store), "SELECT run_id, epochs_to_fit, augment, error FROM runs "
                                 "WHERE experiment = 'fig1' ORDER BY run_id", fmt="csv")
    assert text.splitlines() == ["run_id,epochs_to_fit,augment,error", "r1,3,false,", "r2,3,false,",
                                 "r3,,false,RuntimeError: CUDA out of memory"]


def test_csv_of_a_count_ends_with_the_number(store: Path) -> None:
    text = run_query(str(store), "select count(*) from epochs", fmt="csv")
    assert text.splitlines() == ["count_star()", "9"]
    assert text.splitlines()[-1] == "9" and not text.endswith("\n")


def test_json_is_an_array_of_objects(store: Path) -> None:
    rows = json.loads(run_query(str(store), "SELECT run_id, status, attempts, best_test_acc, started_at "
                                            "FROM runs WHERE experiment = 'fig2' ORDER BY run_id", fmt="json"))
    assert rows == [
        {"run_id": "r3", "status": "failed", "attempts": 3, "best_test_acc": None, "started_at": None},
        {"run_id": "r4", "status": "pending", "attempts": 0, "best_test_acc": 0.55, "started_at": None},
    ]
    assert json.loads(run_query(str(store), "SELECT sum(epoch) AS s FROM epochs", fmt="json")) == [{"s": 10 + 6 + 3}]


def test_parquet_goes_to_the_out_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "summary.parquet"
    assert run_query(str(store), SUMMARY, fmt="parquet", out=str(out)) is None
    table = pq.read_table(out)
    assert table.column_names == ["corruption", "level", "runs", "test_acc", "epochs_to_fit"]
    assert table.num_rows == 4
    assert [p.name for p in out.parent.iterdir()] == ["summary.parquet"]  # no temporary left behind


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_out_writes_the_text_formats_too(store: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"count.{fmt}"
    assert run_query(str(store), "SELECT count(*) AS n FROM runs", fmt=fmt, out=str(out)) is None
    text = out.read_text()
    assert text.endswith("\n")
    if fmt == "json":
        assert json.loads(text) == [{"n": 5}]
    else:
        assert text.split()[-1] == "5"


def test_parquet_needs_an_out_file(store: Path) -> None:
    with pytest.raises(QueryError, match="--out"):
        run_query(str(store), "SELECT 1", fmt="parquet")


def test_an_unknown_format_names_the_valid_ones(store: Path) -> None:
    with pytest.raises(QueryError, match="table, csv, json, parquet"):
        run_query(str(store), "SELECT 1", fmt="xlsx")


@pytest.mark.parametrize("inside", ["summary.parquet", "epochs/r1.parquet", "."])
def test_out_inside_the_store_is_refused(store: Path, inside: str) -> None:
    before = fingerprint(store)
    with pytest.raises(ReadOnlyError, match="inside the store"):
        run_query(str(store), "SELECT 1", fmt="parquet", out=str(store / inside))
    assert fingerprint(store) == before


def test_a_folder_that_is_not_a_store_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RethinkError) as caught:
        run_query(str(tmp_path), "SELECT 1")
    assert str(tmp_path) in str(caught.value) and "rethink submit" in str(caught.value)
    with pytest.raises(RethinkError, match="is not a rethink store"):
        run_query(str(tmp_path / "missing"), "SELECT 1")


def refused_queries(store: Path, outside: Path) -> list[str]:
    """Every way we know to write, load, or read past the store (the brief's list and more)."""
    return [
        f"COPY (SELECT * FROM runs) TO '{outside / 'runs.csv'}'",
        f"COPY (SELECT * FROM runs) TO '{store / 'runs.csv'}'",
        f"COPY epochs TO '{store / 'epochs' / 'copy.parquet'}' (FORMAT parquet)",
        "CREATE TABLE t AS SELECT * FROM runs",
        "DROP VIEW runs",
        "INSERT INTO t VALUES (1)",
        f"ATTACH '{store / 'x.duckdb'}' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA version",
        f"EXPORT DATABASE '{store / 'dump'}'",
        f"SELECT 1; COPY (SELECT 1) TO '{store / 'sneaky.csv'}'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{store / 'explained.csv'}'",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{outside / 'other.parquet'}')",
        f"SELECT * FROM read_parquet('{store}/../other.parquet')",
        "SELECT * FROM glob('/etc/*')",
    ]


def test_writes_and_reads_past_the_store_are_refused_and_change_nothing(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pq.read_table(next(store.glob("epochs/*/epochs.parquet"))), outside / "other.parquet")
    before, before_outside = fingerprint(store), fingerprint(outside)
    for sql in refused_queries(store, outside):
        with pytest.raises(ReadOnlyError) as caught:
            run_query(str(store), sql)
        assert "\n" not in str(caught.value), sql
        assert fingerprint(store) == before, sql
    assert fingerprint(outside) == before_outside


@pytest.mark.parametrize("sql, expected", [
    ("SELECT nope FROM runs", "Binder Error"),
    ("SELECT * FROM no_such_table", "Catalog Error"),
    ("SELECT CAST(run_id AS INTEGER) FROM runs", "Conversion Error"),
    ("SELEC 1", "Parser Error"),
    ("SELECT * FROM runs WHERE", "Parser Error"),
])
def test_sql_errors_are_one_line_and_change_nothing(store: Path, sql: str, expected: str) -> None:
    before = fingerprint(store)
    with pytest.raises(QueryError) as caught:
        run_query(str(store), sql)
    message = str(caught.value)
    assert isinstance(caught.value, RethinkError) and message.startswith(expected)
    assert "\n" not in message and "LINE 1" not in message
    assert fingerprint(store) == before


def test_good_queries_change_nothing(store: Path) -> None:
    before = fingerprint(store)
    for fmt in ("table", "csv", "json"):
        run_query(str(store), "SELECT * FROM runs JOIN epochs USING (run_id)", fmt=fmt)
    run_query(str(store), "SUMMARIZE epochs")
    run_query(str(store), "DESCRIBE runs")
    assert fingerprint(store) == before


def test_an_old_file_read_after_newer_ones_gets_a_retry_that_reads_every_schema(make_store, tmp_path: Path) -> None:
    root = make_store(tmp_path / "store", runs=[{"experiment": "e", "run_id": "r1"}, {"experiment": "e", "run_id": "z9"}],
                      epochs={"r1": epoch_rows("r1", *CURVES["r1"])}, statuses={})
    old = pa.schema([f for f in schema.EPOCHS if f.name != "param_norm"])
    rows = [{k: v for k, v in row.items() if k in old.names} for row in epoch_rows("z9", [0.2], [0.3])]
    write_table(root, layout.RunPaths("z9").epochs, pa.Table.from_pylist(rows, schema=old))
    text = run_query(str(root), "SELECT run_id, count(param_norm) AS n FROM epochs GROUP BY ALL ORDER BY ALL", fmt="csv")
    assert text.splitlines() == ["run_id,n", "r1,4", "z9,0"]
