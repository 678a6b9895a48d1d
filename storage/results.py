"""Results at hand in a notebook: `rethink.open_store(...)` reads a store, local or remote
(s3://...), from Python through the very views and read-only guard of `rethink query`
(reader.py), and gives each answer as an Arrow table, a pandas or a polars frame.

Each query opens its own locked DuckDB connection, as `rethink query` does: the views then fit
the store as it is now (a notebook watching a grid train sees new experiments and rows), and no
connection is shared between threads. pandas and polars are optional: each is imported only by
the method that returns its frame. Every refusal is a RethinkError (`rethink.RethinkError`): an
argument of the wrong kind is a UsageError before anything is read, never a bare TypeError."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import pyarrow as pa

from rethink.errors import RethinkError, UsageError
from rethink.storage.errors import QueryError
from rethink.storage.formatting import format_table
from rethink.storage.reader import Reader
from rethink.storage.views import check_read_only
from rethink.text import one_line, visible

if TYPE_CHECKING:
    import pandas
    import polars

Params = Sequence[Any] | dict[str, Any] | None
F = TypeVar("F", bound=Callable[..., Any])
REPR_ROWS = 20  # rows a result shows when printed; .df(), .pl() and .arrow() hold them all


def _api(func: F) -> F:
    """A public function whose arguments do not fit it (too many, a missing one, an unknown
    keyword) refuses with a UsageError, as one of the wrong kind does, never a bare TypeError."""
    signature = inspect.signature(func)
    name = func.__qualname__.replace("StoreReader.", "")  # sql(), runs(): as a notebook calls them

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UsageError(f"{name}(): {exc}") from None
        return func(*args, **kwargs)

    return call  # type: ignore[return-value]


class MissingPackageError(RethinkError):
    """A frame was asked of a library that is not installed."""


class Result:
    """The rows of one query, fetched whole (the connection is closed by then), in the format
    the caller asks for."""

    def __init__(self, table: pa.Table):
        self._table = table

    @_api
    def arrow(self) -> pa.Table:
        return self._table

    @_api
    def df(self) -> pandas.DataFrame:
        """A pandas DataFrame (needs pandas)."""
        _require("pandas", "df")
        return self._table.to_pandas()

    @_api
    def pl(self) -> polars.DataFrame:
        """A polars DataFrame (needs polars)."""
        polars = _require("polars", "pl")
        return polars.from_arrow(self._table)

    @_api
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

    def __init__(self, reader: Reader):
        self._reader, self._store = reader, reader.store
        self.root = reader.store.root  # the folder, or the bucket path of a remote store
        self.uri = reader.store.uri  # as the caller gave it

    @_api
    def sql(self, query: str, params: Params = None) -> Result:
        """Run read-only SQL; `params` fill `?` (a sequence) or `$name` (a dict) placeholders.
        Writing SQL is refused with the one line `rethink query` prints."""
        if not isinstance(query, str):
            raise UsageError(f"sql() takes the SQL as a str, got {_shown(query)}")
        if not (params is None or isinstance(params, Mapping) and all(isinstance(k, str) for k in params)
                or isinstance(params, (list, tuple))):
            raise UsageError("sql() takes params as a list or tuple (for ? placeholders) or a dict with "
                             f"str keys (for $name placeholders), got {_shown(params)}")
        check_read_only(query)
        return Result(self._fetch(query, params))

    @_api
    def runs(self, experiment: str | None = None) -> Result:
        """The `runs` view, one row per (experiment, run), optionally of one experiment."""
        if experiment is None:
            return self.sql("SELECT * FROM runs ORDER BY experiment, run_id")
        self._check_experiment(experiment)
        return self.sql("SELECT * FROM runs WHERE experiment = ? ORDER BY run_id", [experiment])

    @_api
    def epochs(self, experiment: str | None = None) -> Result:
        """The `epochs` view, one row per run per epoch, optionally of one experiment's runs."""
        if experiment is None:
            return self.sql("SELECT * FROM epochs ORDER BY run_id, epoch")
        self._check_experiment(experiment)
        return self.sql("SELECT * FROM epochs WHERE run_id IN (SELECT run_id FROM runs WHERE experiment = ?) "
                        "ORDER BY run_id, epoch", [experiment])

    @_api
    def experiments(self) -> list[str]:
        """The names of the experiments submitted to this store, sorted."""
        return self._store.experiments()

    def __repr__(self) -> str:
        return f"<rethink store {visible(self.uri)}: {len(self.experiments())} experiments>"

    def _check_experiment(self, name: object) -> None:
        """A misspelt name would give an empty frame, which looks like an answer: refuse it."""
        if not isinstance(name, str):
            raise UsageError(f"an experiment is named by a str, got {_shown(name)}")
        known = self.experiments()
        if name not in known:
            raise QueryError(f"no experiment '{one_line(name)}' in store '{self.uri}' "
                             f"(experiments: {', '.join(known) or 'none yet'})")

    def _fetch(self, query: str, params: Params) -> pa.Table:
        """Run on a fresh locked connection (reader.py: one retry for files of older schemas)."""

        def fetch(con) -> pa.Table:
            relation = con.sql(query, params=params)
            if relation is None:  # every statement passed check_read_only: a read returns rows
                raise QueryError("the query returned no result")
            return relation.to_arrow_table()

        return self._reader.run(fetch)


@_api
def open_store(uri: str | os.PathLike[str]) -> StoreReader:
    """Open the store at `uri` for reading: a local folder, or a pyarrow filesystem URI
    (`file:///abs/path`, `s3://BUCKET/PATH?endpoint_override=...`, with the keys in the
    environment); a place that is not a store is one RethinkError saying so."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise UsageError(f"open_store() takes a store's folder or URI as a str or pathlib.Path, got {_shown(uri)}")
    if not uri.strip():
        raise UsageError("open_store() needs a store's folder or URI, got an empty string")
    if "\x00" in uri:  # no path or URI holds one; the filesystem layers would raise their own error
        raise UsageError(f"open_store() takes a store's folder or URI, got one with a NUL character: {_shown(uri)}")
    return StoreReader(Reader.open(uri))


def _shown(value: object) -> str:
    """A wrong argument as the end of a refusal: its type and a short, printable repr."""
    if value is None:
        return "None"
    text = one_line(repr(value))
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"


def _require(module: str, method: str) -> Any:
    """Import an optional frame library, or one line saying how to get it."""
    try:
        return __import__(module)
    except ImportError:
        raise MissingPackageError(f"Result.{method}() needs {module}, which is not installed: "
                                  f"`pip install {module}`, or use .arrow() or .rows()") from None
