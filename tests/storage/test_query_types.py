"""Every DuckDB type prints: what Python cannot hold (infinite or far-future timestamps,
intervals, UUIDs, bits, unions, UHUGEINT) is printed as DuckDB's own cast to VARCHAR, and a type
Parquet cannot hold is one line naming the column and the fix."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.storage.errors import QueryError
from rethink.storage.formatting import format_csv, format_json, format_table
from rethink.storage.query import run_query

from .conftest import fingerprint

# (SQL expression, what csv prints, what json holds)
VALUES = {
    "infinite timestamp": ("'infinity'::timestamp", "infinity", "infinity"),
    "far-future timestamp": ("'294247-01-10'::timestamp", "294247-01-10 00:00:00", "294247-01-10 00:00:00"),
    "infinite date": ("'-infinity'::date", "-infinity", "-infinity"),
    "infinite timestamptz": ("'infinity'::timestamptz", "infinity", "infinity"),
    "plain timestamp": ("'2024-01-02 03:04:05'::timestamp", "2024-01-02T03:04:05", "2024-01-02T03:04:05"),
    "interval": ("interval 1 day", "1 day", "1 day"),
    "time with zone": ("'12:00:00+02'::timetz", "12:00:00+02", "12:00:00+02"),
    "uuid": ("'0f8fad5b-d9cb-469f-a165-70867728950e'::uuid", "0f8fad5b-d9cb-469f-a165-70867728950e",
             "0f8fad5b-d9cb-469f-a165-70867728950e"),
    "hugeint": ("170141183460469231731687303715884105727::hugeint", "170141183460469231731687303715884105727",
                170141183460469231731687303715884105727),
    "uhugeint": ("340282366920938463463374607431768211455::uhugeint", "340282366920938463463374607431768211455",
                 "340282366920938463463374607431768211455"),
    "huge decimal": ("12345678901234567890123456.789::decimal(38,3)", "12345678901234567890123456.789",
                     1.2345678901234568e25),
    "nan double": ("'nan'::double", "nan", None),
    "blob": ("'ab\\x01'::blob", "ab\\x01", "ab\\x01"),
    "bit": ("'101'::bit", "101", "101"),
    "list": ("[1, 2]", "[1, 2]", [1, 2]),
    "struct": ("{'a': [1, null], 'b': 'x'}", '{"a": [1, null], "b": "x"}', {"a": [1, None], "b": "x"}),
    "map": ("map([1], ['x'])", '[[1, "x"]]', [[1, "x"]]),
    "list of intervals": ("[interval 1 day]", "[1 day]", "[1 day]"),
    "list with an infinite date": ("['infinity'::date, '2024-01-01'::date]", "[infinity, 2024-01-01]",
                                   "[infinity, 2024-01-01]"),
    "union": ("union_value(k := 1)", "1", "1"),
    "fixed array": ("[1, 2, 3]::int[3]", "[1, 2, 3]", "[1, 2, 3]"),
}


@pytest.mark.parametrize("label", VALUES)
def test_every_type_prints_in_every_text_format(store: Path, label: str) -> None:
    sql, as_csv, as_json = VALUES[label]
    query = f"SELECT {sql} AS v"
    rows = list(csv.reader(io.StringIO(run_query(str(store), query, fmt="csv"))))
    assert rows == [["v"], [as_csv]]
    assert json.loads(run_query(str(store), query, fmt="json")) == [{"v": as_json}]
    table = run_query(str(store), query, fmt="table").splitlines()
    assert table[0].strip() == "v" and len(table) == 3


@pytest.mark.parametrize("sql, column", [("interval 1 day", "INTERVAL"), ("[interval 1 hour]", "INTERVAL[]"),
                                         ("1::uhugeint", "UHUGEINT")])
def test_parquet_refuses_a_type_it_cannot_hold_in_one_line(store: Path, tmp_path: Path, sql: str, column: str) -> None:
    before = fingerprint(store)
    out = tmp_path / "out" / "x.parquet"
    with pytest.raises(QueryError) as caught:
        run_query(str(store), f"SELECT 1 AS ok, {sql} AS bad", fmt="parquet", out=str(out))
    assert f"'bad' ({column})" in str(caught.value) and "CAST" in str(caught.value)
    assert list(out.parent.iterdir()) == [] and fingerprint(store) == before  # no file, not even a temporary


def test_parquet_keeps_infinite_timestamps_and_hugeints(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    run_query(str(store), "SELECT 'infinity'::timestamp AS t, sum(epoch) AS s FROM epochs", fmt="parquet", out=str(out))
    assert pq.read_table(out).column("s").to_pylist() == [19]


def test_cli_prints_the_types_without_a_traceback(store: Path, tmp_path: Path) -> None:
    sql = "SELECT " + ", ".join(f"{v[0]} AS c{i}" for i, v in enumerate(VALUES.values()))
    runner = CliRunner()
    for fmt in ("table", "csv", "json"):
        result = runner.invoke(app, ["query", sql, "--store", str(store), "--format", fmt])
        assert result.exit_code == 0 and "infinity" in result.stdout, result.output
    result = runner.invoke(app, ["query", "select interval 1 day", "--store", str(store), "--format", "parquet",
                                 "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_arrow_tables_from_elsewhere_format_too() -> None:
    """format_* also serve StoreReader's repr: values Python cannot hold fall back to Arrow's text."""
    import duckdb

    table = duckdb.sql("SELECT 'infinity'::timestamp AS t, interval 2 day AS i, 1 AS n").to_arrow_table()
    assert format_csv(table).splitlines()[0] == "t,i,n"
    assert json.loads(format_json(table))[0]["n"] == 1
    assert format_table(table).splitlines()[0].split() == ["t", "i", "n"]
