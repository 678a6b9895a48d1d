"""Reading a store: the one way `rethink query`, `rethink status`, `rethink report` and
`rethink.open_store` get at its rows. `Reader.run` connects (the views of views.py over the
files `parts.sources` names, scans.py), locks the connection read-only, runs the caller's work,
retries once when a file of an older schema needs every file's schema read, and turns DuckDB's
errors into one line each. Local folders and remote stores (s3://, any pyarrow filesystem) read
alike; only where the rows come from differs (scans.py).

The read-only lock admits the store and nothing else:
- a local store: `allowed_directories` is the store's folder (resolved), then
  `enable_external_access = false`;
- a remote store: no directory at all; DuckDB scans the Arrow datasets registered on the
  connection, which pyarrow reads from the store, and cannot open a file itself;
- and no spilling (`temp_directory = ''`). DuckDB adds its temp directory to the allowed ones, so
  a fixed temp path (such as `$TMPDIR/rethink-duckdb-$UID`, once used here) made a symlink to
  /etc let `read_text` read /etc/passwd, and a fresh private folder would still be one more
  place to write, create and remove. Queries over a store's results aggregate or stream, so they
  fit in memory; one that does not fails with DuckDB's out-of-memory line instead of spilling.
Then `lock_configuration = true`: no setting can be changed back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from rethink.storage import integrity, layout, parts, retired, schema, views
from rethink.storage.errors import QueryError, ReadOnlyError, StoreError
from rethink.storage.scans import Scan, literal
from rethink.storage.store import Store
from rethink.storage.views import is_schema_mismatch, one_line

T = TypeVar("T")
RERUNS = 5  # reruns of a read that a compaction ran under (each one later sees its record)


class Reader:
    """A store opened for reading through DuckDB."""

    def __init__(self, store: Store):
        self.store = store
        self.folder = Path(os.path.realpath(store.root)) if store.local else None  # None: remote

    @classmethod
    def open(cls, uri: str | os.PathLike[str]) -> Reader:
        """The store at `uri` (a folder or a pyarrow filesystem URI); one StoreError line when
        it is not one."""
        text = os.fspath(uri)
        return cls(Store.open(text if "://" in text else os.path.expanduser(text)))

    def connect(self, union_by_name: bool | None = None, summaries: bool = True) -> duckdb.DuckDBPyConnection:
        """A locked in-memory connection with the views (see `connect`)."""
        return connect(self.store, union_by_name, summaries)

    def run(self, work: Callable[[duckdb.DuckDBPyConnection], T],
            interrupted: Callable[[], None] | None = None, summaries: bool = True,
            redone: Callable[[], bool] | None = None) -> T:
        """`work` (see `_run`), run again when a compaction deleted files it may have listed: the
        compaction marker changed meanwhile, or the work failed while a compaction was deleting
        (storage/retired.py says why that suffices). At most RERUNS times; `redone` is asked
        first and False when the work cannot be repeated (rows already printed): then one line
        says to run it again."""
        for rerun in range(RERUNS + 1):
            before = retired.marker_state(self.store)
            try:
                result = self._run(work, interrupted, summaries)
            except (QueryError, ReadOnlyError, StoreError):
                if rerun == RERUNS or not (retired.marker_state(self.store) != before or retired.records(self.store)):
                    raise
            else:
                if rerun == RERUNS or retired.marker_state(self.store) == before:
                    return result
            if redone is not None and not redone():
                raise QueryError("a compaction replaced store files while the result was being printed, so it "
                                 "may be incomplete; run the query again")
        raise AssertionError("unreachable")

    def _run(self, work: Callable[[duckdb.DuckDBPyConnection], T],
             interrupted: Callable[[], None] | None = None, summaries: bool = True) -> T:
        """`work` on a fresh locked connection, closed after. A file lacking a column that the
        first file has (an older rethink wrote it) fails the fast read: then once more with
        every file's schema read (`union_by_name`). DuckDB's errors become one line: reaching
        outside the store a ReadOnlyError, any other a QueryError; `interrupted` is called first,
        to raise its own error when an interrupt caused DuckDB's. `summaries=False`: only `epochs` and
        `runs`, for work that reads nothing else (status: 15 ms less)."""
        for union_by_name in (None, True):
            con = None
            try:
                try:
                    con = self.connect(union_by_name, summaries)
                except (OSError, pa.ArrowException) as exc:  # the store could not be listed or read
                    raise QueryError(f"cannot read store '{self.store.uri}': {one_line(exc)}") from None
                return work(con)
            except duckdb.Error as exc:
                if interrupted is not None:
                    interrupted()
                if isinstance(exc, duckdb.PermissionException):
                    raise ReadOnlyError(f"queries read only the store's own files: {one_line(exc)}") from None
                if union_by_name is None and is_schema_mismatch(exc):
                    continue
                raise QueryError(_located(self.store, exc)) from None
            finally:
                if con is not None:
                    con.close()
        raise AssertionError("unreachable")


def connect(store: Store | str, union_by_name: bool | None = None, summaries: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views `epochs`, `runs` and (`summaries`) the summaries over
    `store` (a Store, a store URI, or a local folder, read as is), locked so that it reads the
    store's rows and nothing else. `union_by_name`: how a local store's per-run files are stitched
    together (scans.Scan._local); a remote store's read every file by the declared schema."""
    if not isinstance(store, Store):
        store = Store.open(store) if "://" in store else _folder_store(store)
    folder = os.path.realpath(store.root) if store.local else None
    con = duckdb.connect(":memory:")
    try:
        scan = Scan(store, folder)
        files = None if store.local else scan.files  # remote: one LIST per folder serves both
        epochs = scan.table(con, parts.sources(store, "epochs", files), schema.EPOCHS, union_by_name)
        config = scan.table(con, [parts.Source(layout.EXPERIMENT_RUNS_GLOB)], schema.EXPERIMENT_RUNS, True)
        status = scan.table(con, parts.sources(store, "status", files), schema.STATUS, union_by_name)
        _refuse_damaged_parts(store)
        views.create_views(con, epochs=epochs, config=config, status=status, summaries=summaries)
        lock(con, folder)
    except BaseException:
        con.close()
        raise
    return con


def _located(store: Store, exc: duckdb.Error) -> str:
    """DuckDB's line, and for a file that failed to decode, which one and what to do: a corrupt
    page in a per-run file fails with no path at all (storage/integrity.py)."""
    said = one_line(exc)
    if not (type(exc) is duckdb.Error or (isinstance(exc, (duckdb.IOException, duckdb.InvalidInputException))
                                          and ("parquet" in said.lower() or "file" in said.lower()))):
        return said
    found = integrity.first_damaged(store)
    if found is None:
        return said
    relative, why = found
    return f"{relative} is damaged and cannot be read ({why}); {integrity.advice(relative)}"


def _refuse_damaged_parts(store: Store) -> None:
    """A part that cannot be read is no source (parts.list_parts), so the views would count
    without its rows, silently short: refuse instead, in one line that says the way out."""
    damaged = parts.damaged_parts(store)
    if damaged:
        path, why = sorted(damaged.items())[0]
        more = f" (and {len(damaged) - 1} more part)" if len(damaged) > 1 else ""
        raise QueryError(f"{one_line(why)}{more}; the views would count without its rows. `rethink status` "
                         "names the runs that lost rows and `rethink resume NAME` trains them again; then "
                         f"remove {path} (rethink deletes no file it cannot read as its own)")


def lock(con: duckdb.DuckDBPyConnection, folder: str | None) -> None:
    """From now on `con` reads files under `folder` only (None: no file at all), never spills,
    and no setting may be changed back (see the module's docstring)."""
    con.execute("SET temp_directory = ''")
    if folder is not None:
        con.execute(f"SET allowed_directories = [{literal(folder.rstrip('/') + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _folder_store(root: str) -> Store:
    """A local folder as a Store, as the views read it: no marker check (hand-made stores,
    benchmarks)."""
    folder = os.path.abspath(root)
    return Store(pafs.LocalFileSystem(), folder, folder)
