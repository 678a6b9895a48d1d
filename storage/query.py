"""`rethink query`: one read-only SQL query over a store (a local folder or a remote one such as
s3://), formatted as a table, CSV, JSON or Parquet (formatting.py). DuckDB only reads (see
reader.py); any file this writes is written here, from Python, and never inside the store.

Results stream: record batches are fetched and written as they come, to a temporary file that
is renamed at the end, so `--out` of millions of rows never holds them all in memory. Ctrl-C and
`--timeout` interrupt DuckDB itself (`_Watch`), not just the Python around it."""

from __future__ import annotations

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
from typing import Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from rethink.errors import Interrupted, os_errors, path_error
from rethink.storage import atomic
from rethink.storage.errors import QueryError, ReadOnlyError
from rethink.storage.formatting import (TABLE_ROWS, check_parquet, csv_chunks, json_chunks, printable, stdout_is_terminal,
                                        table_text, write_parquet)
from rethink.storage.reader import Reader
from rethink.storage.views import check_read_only, one_line

FORMATS = ("table", "csv", "json", "parquet")
BATCH_ROWS = 65_536  # rows fetched and written at a time
HOLD_CHARS = 1 << 18  # a streamed result this short is printed whole once its read is known good


def run_query(store: str, sql: str, fmt: str = "table", out: str | None = None,
              timeout: float | None = None, echo: Callable[[str], object] | None = None) -> str | None:
    """Run `sql` read-only over the store at `store` (a folder or a store URI). Returns the
    formatted result, or None when it was written to `out` (atomically; never inside a local
    store) or handed to `echo` piece by piece as it streams (CSV and JSON to a terminal or a
    pipe: millions of rows are never held whole). `timeout`: seconds, or None."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "parquet" and out is None:
        raise QueryError("--format parquet writes a file: give it with --out FILE")
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise QueryError(f"--timeout is a number of seconds above 0, got {timeout!r}")
    reader = Reader.open(store)
    target = _out_path(reader.folder, out) if out is not None else None
    check_read_only(sql)
    with _Watch(timeout) as watch:
        printed = [False]  # streamed rows cannot be taken back: such a query is not run again

        def shown(chunk: str) -> object:
            printed[0] = True
            return echo(chunk)  # type: ignore[misc]

        held = reader.run(lambda con: _run_once(con, sql, fmt, target, out, watch, shown if echo else None),
                          interrupted=watch.check, redone=lambda: not printed[0])
    if echo is not None and held is not None:  # a streamed result short enough to be held back whole
        echo(held)
        return None
    return held


def _run_once(con: duckdb.DuckDBPyConnection, sql: str, fmt: str, target: Path | None, out: str | None,
              watch: _Watch, echo: Callable[[str], object] | None = None) -> str | None:
    """One attempt: the output's temporary file is opened first (a path that cannot be written
    fails before the query runs), then the query streams into it."""
    opened = atomic.open_atomic(target, f"--out {out}") if target is not None else nullcontext(None)
    with opened as f:
        try:
            watch.con = con
            watch.check()
            relation = con.sql(sql)
            if relation is None:  # every statement passed check_read_only, so this is odd
                raise QueryError("the query returned no result")
            visible, shadows = len(relation.columns), {}
            if fmt != "parquet":
                relation, shadows = printable(relation)
            reader = relation.to_arrow_reader(BATCH_ROWS)
            batches, names = _batches(reader, watch), reader.schema.names[:visible]
            if fmt == "parquet":
                check_parquet(reader.schema, relation)
                with os_errors("write --out", out):
                    write_parquet(reader.schema, batches, f)
                return None
            if fmt == "table":
                chunks: Iterable[str] = [table_text(batches, visible, shadows, TABLE_ROWS, reader.schema)]
            else:
                chunks = (csv_chunks(batches, visible, shadows, names, terminal=f is None and stdout_is_terminal())
                          if fmt == "csv" else json_chunks(batches, visible, shadows, names))
            if f is None and echo is not None:
                return _stream(chunks, echo)
            if f is None:
                return "".join(chunks).rstrip("\n")
            with os_errors("write --out", out):
                for chunk in chunks:
                    f.write(chunk.encode())
                if fmt != "csv":
                    f.write(b"\n")
            return None
        except _StreamError as exc:
            watch.check()  # an interrupt or timeout surfaces as a stream error: say which
            raise QueryError(str(exc)) from None
        finally:
            watch.con = None


def _stream(chunks: Iterable[str], echo: Callable[[str], object]) -> str | None:
    """Hand the chunks to `echo` as they come, ending with one newline. The first two, and up to
    HOLD_CHARS, are held back: by then the first batch has been read, which is where a file of an
    older schema fails and the query is run again (reader.py); an error after printing began is
    not retried (it would print rows twice) but said in one line. A result that ends within what
    is held is returned, not echoed: run_query prints it once the read is known good, so a
    compaction that ran under a short query reruns it instead of failing it (Reader.run)."""
    held, size, printed, last = [], 0, False, ""
    try:
        for chunk in chunks:
            if not printed:
                held.append(chunk)
                size += len(chunk)
                if len(held) < 2 or size < HOLD_CHARS:
                    continue
                chunk, held, printed = "".join(held), [], True
            if chunk:
                echo(chunk)
                last = chunk
    except duckdb.Error as exc:
        if printed:
            raise QueryError(f"the result broke off after some rows: {one_line(exc)}") from None
        raise
    if not printed:
        return "".join(held).rstrip("\n") + "\n"
    if not last.endswith("\n"):
        echo("\n")
    return None


def _out_path(store: Path | None, out: str) -> Path:
    """Where --out goes, checked before the query runs: outside a local store (a remote store
    is never a local path), and a regular file or nothing yet (a device, FIFO or folder is
    refused: the result would replace it)."""
    with os_errors("write --out", out):
        target = Path(out).expanduser().resolve()
    if store is not None and (target == store or store in target.parents):
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
