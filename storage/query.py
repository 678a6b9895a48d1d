"""`rethink query`: one read-only SQL query over a store, formatted as a table, CSV, JSON or
Parquet. DuckDB only reads (see views.py); any file this writes is written here, from Python,
and never inside the store."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rethink.storage import atomic, layout
from rethink.storage.errors import NotAStoreError, QueryError, ReadOnlyError
from rethink.storage.views import check_read_only, connect, is_schema_mismatch, one_line

FORMATS = ("table", "csv", "json", "parquet")
TABLE_ROWS = 1000  # rows a `table` shows; the other formats give every row


def run_query(root: str, sql: str, fmt: str = "table", out: str | None = None) -> str | None:
    """Run `sql` read-only over the store at `root`. Returns the formatted result, or None when
    it was written to `out` (atomically; never inside the store)."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "parquet" and out is None:
        raise QueryError("--format parquet writes a file: give it with --out FILE")
    store = _store_path(root)
    target = _out_path(store, out) if out is not None else None
    check_read_only(sql)
    table = _fetch(store, sql)
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic.write_bytes(target, buf.getvalue())
        return None
    text = {"table": format_table, "csv": format_csv, "json": format_json}[fmt](table)
    if target is None:
        return text
    atomic.write_bytes(target, (text + "\n").encode())
    return None


def _store_path(root: str) -> Path:
    """The store's local folder, refused unless it holds the store marker."""
    path = root[len("file://"):] if root.startswith("file://") else root
    if "://" in path:
        raise QueryError(f"rethink query reads a local store folder; {root} is remote: mount or copy it locally")
    store = Path(path).expanduser().resolve()
    if not (store / layout.MARKER).is_file():
        raise NotAStoreError(f"{root} is not a rethink store (it has no {layout.MARKER}); "
                             f"`rethink submit GRID.yaml --store {root}` makes one")
    return store


def _out_path(store: Path, out: str) -> Path:
    target = Path(out).expanduser().resolve()
    if target == store or store in target.parents:
        raise ReadOnlyError(f"--out {out} is inside the store, which queries never write: choose a path outside {store}")
    if target.is_dir():
        raise QueryError(f"--out {out} is a folder: give a file name")
    return target


def _fetch(store: Path, sql: str) -> pa.Table:
    """Execute on a locked connection; a file with an older schema gets one retry that reads
    every file's schema (views.connect, `union_by_name`)."""
    for union_by_name in (None, True):
        con = None
        try:
            con = connect(str(store), union_by_name=union_by_name)
            relation = con.sql(sql)
            if relation is None:  # every statement passed check_read_only, so this is odd
                raise QueryError("the query returned no result")
            return relation.to_arrow_table()
        except duckdb.PermissionException as exc:
            raise ReadOnlyError(f"rethink query reads only the store's own files: {one_line(exc)}") from None
        except duckdb.Error as exc:
            if union_by_name is None and is_schema_mismatch(exc):
                continue
            raise QueryError(one_line(exc)) from None
        finally:
            if con is not None:
                con.close()
    raise AssertionError("unreachable")


def format_table(table: pa.Table, max_rows: int = TABLE_ROWS) -> str:
    """A plain aligned text table: a header, a rule, numbers right-aligned, NULL spelt out."""
    if table.column_names == ["explain_key", "explain_value"]:  # EXPLAIN: the plan as drawn
        return "\n".join(str(v) for v in table.column("explain_value").to_pylist())
    shown = table.slice(0, max_rows)
    columns = []
    for name, column in zip(shown.column_names, shown.columns):
        cells = [_cell(v) for v in column.to_pylist()]
        width = max([len(name), *(len(c) for c in cells)])
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type) \
            or pa.types.is_decimal(column.type)
        columns.append(([name, "-" * width] + cells, width, numeric))
    lines = []
    for i in range(shown.num_rows + 2):
        parts = [(col[i].rjust(w) if numeric and i > 1 else col[i].ljust(w)) for col, w, numeric in columns]
        lines.append("  ".join(parts).rstrip())
    if table.num_rows > max_rows:
        lines.append(f"({max_rows:,} of {table.num_rows:,} rows shown; --format csv or --out FILE gives them all)")
    return "\n".join(lines)


def format_csv(table: pa.Table) -> str:
    """Header and rows, plain values (empty for NULL), no index, no trailing newline: a
    one-value result ends with the value, so `... | tail -1` gives it."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches():
        columns = [[_plain(v) for v in column.to_pylist()] for column in batch.columns]
        writer.writerows(zip(*columns))
    return buf.getvalue().rstrip("\n")


def format_json(table: pa.Table) -> str:
    """A JSON array with one object per row; NaN and infinities become null (strict JSON)."""
    rows = [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]
    return json.dumps(rows, indent=2, ensure_ascii=False)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        if math.isfinite(value) and (value == 0 or 1e-4 <= abs(value) < 1e15):
            return f"{value:.6f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
        return f"{value:.6g}"
    return _plain(value).replace("\n", " ")


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value

