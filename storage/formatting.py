"""How `rethink query` prints: DuckDB results as an aligned text table, CSV, JSON or Parquet,
written batch by batch so a result of millions of rows never sits in memory as Python values.
Every DuckDB type prints: a value Python cannot hold becomes DuckDB's own text for it.

A store's text is data, never terminal control (rethink/text.py): the table shows control
characters visibly (`\x1b`), JSON writes them as `\u001b` escapes (the same string to a JSON
reader), and CSV, which has no escapes, keeps the exact bytes for programs and files but shows
them visibly when it is printed to a terminal (see `csv_chunks`)."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import math
import sys
from typing import IO, Any, Iterable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rethink.storage.errors import QueryError
from rethink.text import json_text
from rethink.text import visible as show  # `visible` is a parameter name below: the column count

TABLE_ROWS = 1000  # rows a `table` shows; the other formats give every row

# DuckDB types the formatters print from their Python values; any other type is printed as
# DuckDB's own cast to VARCHAR (intervals, UUIDs, blobs, bits, enums, unions, ...).
_NATIVE = frozenset("""boolean tinyint smallint integer bigint hugeint utinyint usmallint uinteger
    ubigint float double decimal varchar""".split())
# Python holds only some of these (not 'infinity', not year 10000): each carries its VARCHAR
# cast beside it, used for the values Python cannot hold.
_TEMPORAL = frozenset("""date time timestamp timestamp_s timestamp_ms timestamp_ns
    timestamp with time zone""".split())
_NESTED = frozenset({"list", "struct", "map"})
_SHADOW = "__rethink_text_{}"


# ---- types -----------------------------------------------------------------------------------


def _kind(duck_type: Any) -> str:
    """'native', 'temporal' (native, with a VARCHAR fallback) or 'text' (VARCHAR only)."""
    kind = duck_type.id
    if kind in _NATIVE:
        return "native"
    if kind in _TEMPORAL:
        return "temporal"
    if kind in _NESTED:
        kinds = {_kind(child) for _, child in duck_type.children}
        return "text" if "text" in kinds else "temporal" if "temporal" in kinds else "native"
    return "text"


def printable(relation: duckdb.DuckDBPyRelation) -> tuple[duckdb.DuckDBPyRelation, dict[int, int]]:
    """The relation with every column the formatters can print: types they cannot convert are
    cast to VARCHAR by DuckDB, and temporal ones carry that cast beside them (a hidden column
    after the visible ones; `shadows` maps a visible index to it)."""
    kinds = [_kind(t) for t in relation.types]
    if all(k == "native" for k in kinds):
        return relation, {}
    names = relation.columns
    exprs = [f"CAST(#{i + 1} AS VARCHAR) AS {_identifier(n)}" if k == "text" else f"#{i + 1} AS {_identifier(n)}"
             for i, (n, k) in enumerate(zip(names, kinds))]
    shadows = {}
    for i, k in enumerate(kinds):
        if k == "temporal":
            shadows[i] = len(exprs)
            exprs.append(f"CAST(#{i + 1} AS VARCHAR) AS {_identifier(_SHADOW.format(i))}")
    return relation.project(", ".join(exprs)), shadows


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_parquet(schema: pa.Schema, relation: duckdb.DuckDBPyRelation) -> None:
    """Name the first column Parquet cannot hold (an INTERVAL, say), with the fix. UHUGEINT
    reaches Arrow as a DECIMAL(38) that cannot hold it (2**128 - 1 arrives as -1): refused too."""
    for i, field in enumerate(schema):
        if "UHUGEINT" in str(relation.types[i]):
            raise QueryError(f"column {field.name!r} ({relation.types[i]}) cannot be written to Parquet exactly: cast "
                             f"it in the SQL (e.g. CAST({_identifier(field.name)} AS VARCHAR)) or use --format csv")
        try:
            pq.ParquetWriter(pa.BufferOutputStream(), pa.schema([field])).close()
        except (pa.ArrowException, ValueError, TypeError):
            raise QueryError(f"column {field.name!r} ({relation.types[i]}) cannot be written to Parquet: cast it "
                             f"in the SQL (e.g. CAST({_identifier(field.name)} AS VARCHAR)) or use --format csv") from None


def write_parquet(schema: pa.Schema, batches: Iterable[pa.RecordBatch], f: IO[bytes]) -> None:
    with pq.ParquetWriter(f, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _columns(batch: pa.RecordBatch, visible: int, shadows: dict[int, int]) -> list[list]:
    """The visible columns of `batch` as Python values."""
    return [_values(batch.column(i), batch.column(shadows[i]) if i in shadows else None) for i in range(visible)]


def _values(column: pa.Array, text: pa.Array | None) -> list:
    """Python values; a value Python cannot hold becomes its text: DuckDB's cast when the query
    carried it, else Arrow's."""
    try:
        return column.to_pylist()
    except (ValueError, OverflowError, TypeError, pa.ArrowException):
        pass
    fallback = text.to_pylist() if text is not None else _arrow_text(column)
    out = []
    for i in range(len(column)):
        try:
            out.append(column[i].as_py())
        except (ValueError, OverflowError, TypeError, pa.ArrowException):
            out.append(fallback[i])
    return out


def _arrow_text(column: pa.Array) -> list:
    import pyarrow.compute as pc  # here only: it imports numpy, which `rethink query` otherwise never loads

    try:
        return pc.cast(column, pa.string()).to_pylist()
    except (pa.ArrowException, ValueError, TypeError):
        return [None if not column[i].is_valid else str(column[i]) for i in range(len(column))]


# ---- formats ---------------------------------------------------------------------------------


def format_table(table: pa.Table, max_rows: int = TABLE_ROWS) -> str:
    """A plain aligned text table: a header, a rule, numbers right-aligned, NULL spelt out."""
    return table_text(table.to_batches(), table.num_columns, {}, max_rows, table.schema)


def format_csv(table: pa.Table) -> str:
    """Header and rows, plain values (empty for NULL), no index, no trailing newline: a
    one-value result ends with the value, so `... | tail -1` gives it."""
    return "".join(csv_chunks(table.to_batches(), table.num_columns, {}, table.column_names)).rstrip("\n")


def format_json(table: pa.Table) -> str:
    """A JSON array with one object per row; NaN and infinities become null (strict JSON)."""
    return "".join(json_chunks(table.to_batches(), table.num_columns, {}, table.column_names))


def table_text(batches: Iterable[pa.RecordBatch], visible: int, shadows: dict[int, int], max_rows: int,
                schema: pa.Schema) -> str:
    """The first `max_rows` rows aligned; the rest only counted, never held. For the terminal:
    control characters in values and names are shown visibly, never sent."""
    explain = schema.names[:visible] == ["explain_key", "explain_value"]  # EXPLAIN: the plan as drawn
    cells: list[list[str]] = [[] for _ in range(visible)]
    total = 0
    for batch in batches:
        room = max_rows - min(total, max_rows)
        if room or explain:
            part = batch if explain else batch.slice(0, room)
            for i, values in enumerate(_columns(part, visible, shadows)):
                cells[i].extend(str(v) if explain else _cell(v) for v in values)
        total += batch.num_rows
    if explain:  # the plan's own line breaks kept, anything else that acts shown
        return "\n".join(show(line) for plan in cells[1] for line in plan.split("\n"))
    columns = []
    for field, column in zip(list(schema)[:visible], cells):
        name = show(field.name)
        width = max([len(name), *(len(c) for c in column)])
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        columns.append(([name, "-" * width] + column, width, numeric))
    lines = []
    for i in range(min(total, max_rows) + 2):
        parts = [(col[i].rjust(w) if numeric and i > 1 else col[i].ljust(w)) for col, w, numeric in columns]
        lines.append("  ".join(parts).rstrip())
    if total > max_rows:
        lines.append(f"({max_rows:,} of {total:,} rows shown; --format csv or --out FILE gives them all)")
    return "\n".join(lines)


def csv_chunks(batches: Iterable[pa.RecordBatch], visible: int, shadows: dict[int, int],
                names: list[str], terminal: bool = False) -> Iterator[str]:
    """CSV text: the header, then each batch's rows as they come.

    CSV is data for programs, and has no escapes: to a file or a pipe a value goes out byte for
    byte (an error text with a newline or ESC reads back the same in pandas or DuckDB). Printed
    to a terminal (`terminal`, which the caller knows), values and names have their control
    characters shown visibly instead, like the table: there a person reads it, and an `ESC ]0;`
    from the store would retitle the window or clear the screen."""
    text = show if terminal else _same
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([text(n) for n in names])
    yield buf.getvalue()
    buf.seek(0)
    buf.truncate()
    for batch in batches:
        columns = [[text(_plain(v)) for v in values] for values in _columns(batch, visible, shadows)]
        writer.writerows(zip(*columns))
        del columns  # one batch of Python values at a time
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()


def stdout_is_terminal() -> bool:
    """Whether what goes to stdout reaches a person's terminal (not a file, pipe or closed fd)."""
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except (ValueError, OSError):  # closed
        return False


def json_chunks(batches: Iterable[pa.RecordBatch], visible: int, shadows: dict[int, int],
                 names: list[str]) -> Iterator[str]:
    """One JSON array of row objects, streamed: the same data as json.dumps(rows, indent=2),
    with control characters as \\u escapes even where json.dumps leaves them (text.json_text)."""
    first = True
    for batch in batches:
        for row in zip(*_columns(batch, visible, shadows)):
            obj = {k: _json_value(v) for k, v in zip(names, row)}
            text = json_text(obj, indent=2, default=str).replace("\n", "\n  ")
            yield ("[\n  " if first else ",\n  ") + text
            first = False
    yield "[]" if first else "\n]"


def _same(value: str) -> str:
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        if math.isfinite(value) and (value == 0 or 1e-4 <= abs(value) < 1e15):
            return f"{value:.6f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
        return f"{value:.6g}"
    return show(_plain(value).replace("\n", " "))


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(int(value)) if value.is_finite() and value == value.to_integral_value() else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict)):  # LIST, STRUCT, MAP: as JSON, which reads back
        return json_text(_json_value(value), default=str)
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
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
