"""`rethink query`: one read-only SQL query over a store, formatted as a table, CSV, JSON or
Parquet. DuckDB only reads (see views.py); any file this writes is written here, from Python,
and never inside the store.

Results stream: record batches are fetched and written as they come, to a temporary file that
is renamed at the end, so `--out` of millions of rows never holds them all in memory. Ctrl-C and
`--timeout` interrupt DuckDB itself (`_Watch`), not just the Python around it."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import os
import select
import signal
import socket
import stat
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rethink.errors import Interrupted, os_errors, path_error
from rethink.storage import atomic, layout
from rethink.storage.errors import NotAStoreError, QueryError, ReadOnlyError
from rethink.storage.views import check_read_only, connect, is_schema_mismatch, one_line

FORMATS = ("table", "csv", "json", "parquet")
TABLE_ROWS = 1000  # rows a `table` shows; the other formats give every row
BATCH_ROWS = 65_536  # rows fetched and written at a time

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


def run_query(root: str, sql: str, fmt: str = "table", out: str | None = None,
              timeout: float | None = None) -> str | None:
    """Run `sql` read-only over the store at `root`. Returns the formatted result, or None when
    it was written to `out` (atomically; never inside the store). `timeout`: seconds, or None."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "parquet" and out is None:
        raise QueryError("--format parquet writes a file: give it with --out FILE")
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise QueryError(f"--timeout is a number of seconds above 0, got {timeout!r}")
    store = _store_path(root)
    target = _out_path(store, out) if out is not None else None
    check_read_only(sql)
    with _Watch(timeout) as watch:
        for union_by_name in (None, True):
            try:
                return _run_once(store, sql, fmt, target, out, union_by_name, watch)
            except (duckdb.Error, _StreamError) as exc:
                watch.check()  # an interrupt or timeout surfaces as a DuckDB error: say which
                if isinstance(exc, duckdb.PermissionException):
                    raise ReadOnlyError(f"rethink query reads only the store's own files: {one_line(exc)}") from None
                if union_by_name is None and is_schema_mismatch(exc):
                    continue
                raise QueryError(one_line(exc)) from None
    raise AssertionError("unreachable")


def _run_once(store: Path, sql: str, fmt: str, target: Path | None, out: str | None,
              union_by_name: bool | None, watch: _Watch) -> str | None:
    """One attempt: the output's temporary file is opened first (a path that cannot be written
    fails before any work), then the query streams into it."""
    opened = atomic.open_atomic(target, f"--out {out}") if target is not None else nullcontext(None)
    with opened as f:
        con = connect(str(store), union_by_name=union_by_name)
        try:
            watch.con = con
            watch.check()
            relation = con.sql(sql)
            if relation is None:  # every statement passed check_read_only, so this is odd
                raise QueryError("the query returned no result")
            visible, shadows = len(relation.columns), {}
            if fmt != "parquet":
                relation, shadows = _printable(relation)
            reader = relation.to_arrow_reader(BATCH_ROWS)
            batches, names = _batches(reader, watch), reader.schema.names[:visible]
            if fmt == "parquet":
                _check_parquet(reader.schema, relation)
                with os_errors("write --out", out):
                    _write_parquet(reader.schema, batches, f)
                return None
            if fmt == "table":
                chunks: Iterable[str] = [_table_text(batches, visible, shadows, TABLE_ROWS, reader.schema)]
            else:
                chunks = (_csv_chunks if fmt == "csv" else _json_chunks)(batches, visible, shadows, names)
            if f is None:
                return "".join(chunks).rstrip("\n")
            with os_errors("write --out", out):
                for chunk in chunks:
                    f.write(chunk.encode())
                if fmt != "csv":
                    f.write(b"\n")
            return None
        finally:
            watch.con = None
            con.close()


def _store_path(root: str) -> Path:
    """The store's local folder, refused unless it holds the store marker."""
    path = root[len("file://"):] if root.startswith("file://") else root
    if "://" in path:
        raise QueryError(f"rethink query reads a local store folder; {root} is remote: mount or copy it locally")
    with os_errors("read the store", root):
        store = Path(path).expanduser().resolve()
        marked = (store / layout.MARKER).is_file()
    if not marked:
        raise NotAStoreError(f"{root} is not a rethink store (it has no {layout.MARKER}); "
                             f"`rethink submit GRID.yaml --store {root}` makes one")
    return store


def _out_path(store: Path, out: str) -> Path:
    """Where --out goes, checked before the query runs: outside the store, and a regular file or
    nothing yet (a device, FIFO or folder is refused: the result would replace it)."""
    with os_errors("write --out", out):
        target = Path(out).expanduser().resolve()
    if target == store or store in target.parents:
        raise ReadOnlyError(f"--out {out} is inside the store, which queries never write: choose a path outside {store}")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise path_error(exc, "write --out", out) from None
    if stat.S_ISDIR(mode):
        raise QueryError(f"--out {out} is a folder: give a file name")
    if not stat.S_ISREG(mode):
        raise QueryError(f"--out {out} is a device, pipe or socket, not a regular file: give a file name "
                         "(rethink writes regular files only)")
    return target


# ---- interrupting ----------------------------------------------------------------------------


class _StreamError(Exception):
    """DuckDB failed while handing over record batches (pyarrow reports it as an OSError)."""


class _Watch:
    """Stops the running query on Ctrl-C (SIGINT) or after `timeout` seconds. A watchdog thread
    calls DuckDB's `interrupt()`: a Python signal handler alone runs only once DuckDB returns,
    so the thread hears the signal through `signal.set_wakeup_fd`, written by the C handler."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout, self.reason, self.con = timeout, None, None
        self._stop = threading.Event()
        self._signals: tuple | None = None

    def __enter__(self) -> _Watch:
        deadline = time.monotonic() + self.timeout if self.timeout else None
        if threading.current_thread() is threading.main_thread():
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            wsock.setblocking(False)
            old_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
            old_handler = signal.signal(signal.SIGINT, lambda signum, frame: self._fire("interrupt"))
            self._signals = (rsock, wsock, old_fd, old_handler)
        self._thread = threading.Thread(target=self._run, args=(deadline,), daemon=True, name="rethink-query-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._signals:
            rsock, wsock, old_fd, old_handler = self._signals
            signal.signal(signal.SIGINT, old_handler)
            signal.set_wakeup_fd(old_fd)
            rsock.close()
            wsock.close()

    def _run(self, deadline: float | None) -> None:
        rsock = self._signals[0] if self._signals else None
        while not self._stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._fire("timeout")
                return
            wait = 0.1 if left is None else min(0.1, left)
            if rsock is None:
                self._stop.wait(wait)
            elif select.select([rsock], [], [], wait)[0]:
                try:
                    heard = rsock.recv(64)
                except OSError:
                    heard = b""
                if bytes([signal.SIGINT]) in heard:
                    self._fire("interrupt")

    def _fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        con = self.con
        if con is not None:
            try:
                con.interrupt()
            except Exception:  # the connection closed meanwhile: nothing is running
                pass

    def check(self) -> None:
        """Raise the one-line error of an interrupt or timeout, if one happened."""
        if self.reason == "interrupt":
            raise Interrupted("query interrupted (Ctrl-C); nothing was written")
        if self.reason == "timeout":
            raise QueryError(f"query took longer than {self.timeout:g} s (--timeout); "
                             "narrow it with WHERE or LIMIT, or give it more time")


def _batches(reader: pa.RecordBatchReader, watch: _Watch) -> Iterator[pa.RecordBatch]:
    while True:
        watch.check()
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            raise _StreamError(one_line(exc)) from None
        yield batch


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


def _printable(relation: duckdb.DuckDBPyRelation) -> tuple[duckdb.DuckDBPyRelation, dict[int, int]]:
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


def _check_parquet(schema: pa.Schema, relation: duckdb.DuckDBPyRelation) -> None:
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


def _write_parquet(schema: pa.Schema, batches: Iterable[pa.RecordBatch], f: IO[bytes]) -> None:
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
    try:
        return pc.cast(column, pa.string()).to_pylist()
    except (pa.ArrowException, ValueError, TypeError):
        return [None if not column[i].is_valid else str(column[i]) for i in range(len(column))]


# ---- formats ---------------------------------------------------------------------------------


def format_table(table: pa.Table, max_rows: int = TABLE_ROWS) -> str:
    """A plain aligned text table: a header, a rule, numbers right-aligned, NULL spelt out."""
    return _table_text(table.to_batches(), table.num_columns, {}, max_rows, table.schema)


def format_csv(table: pa.Table) -> str:
    """Header and rows, plain values (empty for NULL), no index, no trailing newline: a
    one-value result ends with the value, so `... | tail -1` gives it."""
    return "".join(_csv_chunks(table.to_batches(), table.num_columns, {}, table.column_names)).rstrip("\n")


def format_json(table: pa.Table) -> str:
    """A JSON array with one object per row; NaN and infinities become null (strict JSON)."""
    return "".join(_json_chunks(table.to_batches(), table.num_columns, {}, table.column_names))


def _table_text(batches: Iterable[pa.RecordBatch], visible: int, shadows: dict[int, int], max_rows: int,
                schema: pa.Schema) -> str:
    """The first `max_rows` rows aligned; the rest only counted, never held."""
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
    if explain:
        return "\n".join(cells[1])
    columns = []
    for field, column in zip(list(schema)[:visible], cells):
        width = max([len(field.name), *(len(c) for c in column)])
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        columns.append(([field.name, "-" * width] + column, width, numeric))
    lines = []
    for i in range(min(total, max_rows) + 2):
        parts = [(col[i].rjust(w) if numeric and i > 1 else col[i].ljust(w)) for col, w, numeric in columns]
        lines.append("  ".join(parts).rstrip())
    if total > max_rows:
        lines.append(f"({max_rows:,} of {total:,} rows shown; --format csv or --out FILE gives them all)")
    return "\n".join(lines)


def _csv_chunks(batches: Iterable[pa.RecordBatch], visible: int, shadows: dict[int, int],
                names: list[str]) -> Iterator[str]:
    """CSV text: the header, then each batch's rows as they come."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    yield buf.getvalue()
    buf.seek(0)
    buf.truncate()
    for batch in batches:
        columns = [[_plain(v) for v in values] for values in _columns(batch, visible, shadows)]
        writer.writerows(zip(*columns))
        del columns  # one batch of Python values at a time
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()


def _json_chunks(batches: Iterable[pa.RecordBatch], visible: int, shadows: dict[int, int],
                 names: list[str]) -> Iterator[str]:
    """One JSON array of row objects, streamed: the same text as json.dumps(rows, indent=2)."""
    first = True
    for batch in batches:
        for row in zip(*_columns(batch, visible, shadows)):
            obj = {k: _json_value(v) for k, v in zip(names, row)}
            text = json.dumps(obj, indent=2, ensure_ascii=False, default=str).replace("\n", "\n  ")
            yield ("[\n  " if first else ",\n  ") + text
            first = False
    yield "[]" if first else "\n]"


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
        return str(int(value)) if value.is_finite() and value == value.to_integral_value() else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict)):  # LIST, STRUCT, MAP: as JSON, which reads back
        return json.dumps(_json_value(value), ensure_ascii=False, default=str)
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
