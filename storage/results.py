"""Results at hand in a notebook: `rethink.open_store(...)` reads a store from Python through the
very views and read-only guard of `rethink query` (views.py), and gives each answer as an Arrow
table, a pandas or a polars frame.

Each query opens its own locked DuckDB connection, as `rethink query` does: the views then fit
the store as it is now (a notebook watching a grid train sees new experiments and rows), and no
connection is shared between threads. pandas and polars are optional: each is imported only by
the method that returns its frame."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import duckdb
import pyarrow as pa

from rethink.errors import RethinkError
from rethink.storage.errors import QueryError, ReadOnlyError
from rethink.storage.query import format_table
from rethink.storage.store import Store, StoreError
from rethink.storage.views import check_read_only, connect, is_schema_mismatch, one_line

if TYPE_CHECKING:
    import pandas
    import polars

Params = Sequence[Any] | dict[str, Any] | None
REPR_ROWS = 20  # rows a result shows when printed; .df(), .pl() and .arrow() hold them all


class RemoteStoreError(StoreError):
    """A store on a remote filesystem (s3://, gs://...): only local stores are read so far."""


class MissingPackageError(RethinkError):
    """A frame was asked of a library that is not installed."""


class Result:
    """The rows of one query, fetched whole (the connection is closed by then), in the format
    the caller asks for."""

    def __init__(self, table: pa.Table):
        self._table = table

    def arrow(self) -> pa.Table:
        return self._table

    def df(self) -> pandas.DataFrame:
        """A pandas DataFrame (needs pandas)."""
        _require("pandas", "df")
        return self._table.to_pandas()

    def pl(self) -> polars.DataFrame:
        """A polars DataFrame (needs polars)."""
        polars = _require("polars", "pl")
        return polars.from_arrow(self._table)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per row: plain Python values, no frame library needed."""
        return self._table.to_pylist()

    @property
    def columns(self) -> list[str]:
        return self._table.column_names

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return format_table(self._table, max_rows=REPR_ROWS)


class StoreReader:
    """A store opened for reading: SQL over the views of `rethink query` (runs, epochs, and the
    summaries memorization, fit_time, gaps, probes). It never writes."""

    def __init__(self, store: Store):
        self._store = store
        self.root = store.root  # the local folder DuckDB reads
        self.uri = store.uri  # as the caller gave it

    def sql(self, query: str, params: Params = None) -> Result:
        """Run read-only SQL; `params` fill `?` (a sequence) or `$name` (a dict) placeholders.
        Writing SQL is refused with the one line `rethink query` prints."""
        check_read_only(query)
        return Result(self._fetch(query, params))

    def runs(self, experiment: str | None = None) -> Result:
        """The `runs` view, one row per (experiment, run), optionally of one experiment."""
        if experiment is None:
            return self.sql("SELECT * FROM runs ORDER BY experiment, run_id")
        self._check_experiment(experiment)
        return self.sql("SELECT * FROM runs WHERE experiment = ? ORDER BY run_id", [experiment])

    def epochs(self, experiment: str | None = None) -> Result:
        """The `epochs` view, one row per run per epoch, optionally of one experiment's runs."""
        if experiment is None:
            return self.sql("SELECT * FROM epochs ORDER BY run_id, epoch")
        self._check_experiment(experiment)
        return self.sql("SELECT * FROM epochs WHERE run_id IN (SELECT run_id FROM runs WHERE experiment = ?) "
                        "ORDER BY run_id, epoch", [experiment])

    def experiments(self) -> list[str]:
        """The names of the experiments submitted to this store, sorted."""
        return self._store.experiments()

    def __repr__(self) -> str:
        return f"<rethink store {self.uri}: {len(self.experiments())} experiments>"

    def _check_experiment(self, name: str) -> None:
        """A misspelt name would give an empty frame, which looks like an answer: refuse it."""
        known = self.experiments()
        if name not in known:
            raise QueryError(f"no experiment '{name}' in store '{self.uri}' "
                             f"(experiments: {', '.join(known) or 'none yet'})")

    def _fetch(self, query: str, params: Params) -> pa.Table:
        """Run on a fresh locked connection; a file with an older schema gets one retry that
        reads every file's schema (views.connect, `union_by_name`)."""
        for union_by_name in (None, True):
            con = None
            try:
                con = connect(self.root, union_by_name=union_by_name)
                relation = con.sql(query, params=params)
                if relation is None:  # every statement passed check_read_only: a read returns rows
                    raise QueryError("the query returned no result")
                return relation.to_arrow_table()
            except duckdb.PermissionException as exc:
                raise ReadOnlyError(f"queries read only the store's own files: {one_line(exc)}") from None
            except duckdb.Error as exc:
                if union_by_name is None and is_schema_mismatch(exc):
                    continue
                raise QueryError(one_line(exc)) from None
            finally:
                if con is not None:
                    con.close()
        raise AssertionError("unreachable")


def open_store(uri: str | os.PathLike[str]) -> StoreReader:
    """Open the store at `uri` for reading: a local folder, or a pyarrow filesystem URI
    (`file:///abs/path`). Remote URIs (s3://, gs://) are refused for now, before any network
    call; a place that is not a store is one RethinkError saying so."""
    text = os.fspath(uri)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in ("", "file"):
        raise RemoteStoreError(f"'{text}' is a remote store, which is not readable from Python yet: "
                               f"copy or mount it locally and open the local folder")
    if not scheme:
        text = str(Path(text).expanduser())
    return StoreReader(Store.open(text))


def _require(module: str, method: str) -> Any:
    """Import an optional frame library, or one line saying how to get it."""
    try:
        return __import__(module)
    except ImportError:
        raise MissingPackageError(f"Result.{method}() needs {module}, which is not installed: "
                                  f"`pip install {module}`, or use .arrow() or .rows()") from None
